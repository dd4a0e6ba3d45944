package api_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/keepwatch/keepwatch/api"
)

// docURL names the document for the schema compiler; schemas inside it are
// compiled by JSON pointer, so their "#/components/..." references resolve
// against the whole document.
const docURL = "file:///keepwatch/openapi.json"

var methods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

// load parses the embedded document twice: once as plain JSON for walking and
// once in the schema library's number-preserving form.
func load(t *testing.T) (map[string]any, any) {
	t.Helper()
	var doc map[string]any
	if err := json.Unmarshal(api.OpenAPI, &doc); err != nil {
		t.Fatalf("openapi.json does not parse: %v", err)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(api.OpenAPI))
	if err != nil {
		t.Fatalf("openapi.json does not parse for the schema library: %v", err)
	}
	return doc, inst
}

func TestDocumentIsOpenAPI31(t *testing.T) {
	doc, _ := load(t)
	if v, _ := doc["openapi"].(string); !strings.HasPrefix(v, "3.1.") {
		t.Errorf("openapi = %q, want 3.1.x", v)
	}
	info, _ := doc["info"].(map[string]any)
	if info["title"] == nil || info["version"] == nil {
		t.Errorf("info needs title and version: %v", info)
	}
	if _, ok := doc["paths"].(map[string]any); !ok {
		t.Fatal("no paths")
	}
}

// TestReferencesResolve checks that every $ref names something in the document.
func TestReferencesResolve(t *testing.T) {
	doc, _ := load(t)
	walk(doc, "", func(ptr string, node map[string]any) {
		ref, ok := node["$ref"].(string)
		if !ok {
			return
		}
		if !strings.HasPrefix(ref, "#/") {
			t.Errorf("%s: $ref %q is not local", ptr, ref)
			return
		}
		if _, err := resolve(doc, ref[1:]); err != nil {
			t.Errorf("%s: $ref %q: %v", ptr, ref, err)
		}
	})
}

// TestOperations checks what every operation needs: an id, responses, a
// service, path parameters matching the template, and auth errors where auth
// is required.
func TestOperations(t *testing.T) {
	doc, _ := load(t)
	ids := map[string]string{}
	for _, op := range operations(t, doc) {
		name := op.method + " " + op.path
		t.Run(name, func(t *testing.T) {
			id, _ := op.op["operationId"].(string)
			if id == "" {
				t.Error("no operationId")
			} else if prev, dup := ids[id]; dup {
				t.Errorf("operationId %q also used by %s", id, prev)
			}
			ids[id] = name
			if len(op.responses) == 0 {
				t.Fatal("no responses")
			}
			for code, r := range op.responses {
				if code != "default" {
					if n, err := strconv.Atoi(code); err != nil || n < 100 || n > 599 {
						t.Errorf("response code %q is not an HTTP status", code)
					}
				}
				if d, _ := r["description"].(string); d == "" {
					t.Errorf("response %s has no description", code)
				}
			}
			if len(op.services) == 0 {
				t.Error("x-keepwatch-services names no service")
			}
			for _, s := range op.services {
				if s != "command" && s != "query" && s != "flush" {
					t.Errorf("unknown service %q", s)
				}
			}
			declared := map[string]bool{}
			for _, p := range op.params {
				if p["in"] == "path" {
					declared[p["name"].(string)] = true
					if p["required"] != true {
						t.Errorf("path parameter %v must be required", p["name"])
					}
				}
			}
			for _, m := range regexp.MustCompile(`\{([^}]+)\}`).FindAllStringSubmatch(op.path, -1) {
				if !declared[m[1]] {
					t.Errorf("path parameter {%s} is not declared", m[1])
				}
				delete(declared, m[1])
			}
			for p := range declared {
				t.Errorf("parameter %q is declared in path but not in the template", p)
			}
			if sec, ok := op.op["security"].([]any); ok && len(sec) > 0 {
				if _, ok := op.responses["401"]; !ok {
					t.Error("authenticated operation does not document 401")
				}
			}
		})
	}
}

// TestStatusCodesOfTheContract pins the status codes DESIGN.md promises for
// each endpoint, so the document cannot silently drop one.
func TestStatusCodesOfTheContract(t *testing.T) {
	doc, _ := load(t)
	commandWrite := []string{"202", "400", "401", "413", "415", "422", "429", "503"}
	queryRead := []string{"200", "304", "401", "503"}
	want := map[string][]string{
		"post /v1/progress":              commandWrite,
		"post /v1/progress/batch":        commandWrite,
		"delete /v1/progress/{video_id}": {"202", "401", "422", "429", "503"},
		"delete /v1/progress":            {"202", "401", "422", "429", "503"},
		"get /v1/export":                 {"200", "401", "429", "503"},
		"get /v1/keep-watching":          queryRead,
		"get /v1/progress":               queryRead,
		"get /v1/progress/{video_id}":    append([]string{"404"}, queryRead...),
		"get /healthz":                   {"200"},
		"get /readyz":                    {"200", "503"},
		"get /metrics":                   {"200"},
		"get /openapi.json":              {"200"},
	}
	got := map[string]operation{}
	for _, op := range operations(t, doc) {
		got[op.method+" "+op.path] = op
	}
	for name, codes := range want {
		op, ok := got[name]
		if !ok {
			t.Errorf("%s is not documented", name)
			continue
		}
		for _, c := range codes {
			if _, ok := op.responses[c]; !ok {
				t.Errorf("%s does not document %s", name, c)
			}
		}
	}
	for _, name := range []string{"post /v1/progress", "post /v1/progress/batch"} {
		for _, c := range []string{"429", "503"} {
			if h, _ := got[name].responses[c]["headers"].(map[string]any); h["Retry-After"] == nil {
				t.Errorf("%s %s does not document Retry-After", name, c)
			}
		}
	}
	for code, r := range got["post /v1/progress"].responses {
		if code[0] == '4' || code[0] == '5' {
			content, _ := r["content"].(map[string]any)
			if content["application/problem+json"] == nil {
				t.Errorf("post /v1/progress %s is not application/problem+json", code)
			}
		}
	}
}

// TestExamplesValidate compiles every schema in the document (JSON Schema
// 2020-12, formats asserted) and validates every example beside it: media type
// examples, parameter and header examples, and schemas' own examples.
func TestExamplesValidate(t *testing.T) {
	doc, inst := load(t)
	c := compiler(t, inst)
	n := 0
	walk(doc, "", func(ptr string, node map[string]any) {
		if _, ok := node["schema"].(map[string]any); ok {
			var examples []example
			if ex, ok := node["example"]; ok {
				examples = append(examples, example{ptr + "/example", ex})
			}
			if exs, ok := node["examples"].(map[string]any); ok {
				for name, e := range exs {
					e := e.(map[string]any)
					if ref, ok := e["$ref"].(string); ok {
						r, err := resolve(doc, ref[1:])
						if err != nil {
							t.Errorf("%s: %v", ptr, err)
							continue
						}
						e = r.(map[string]any)
					}
					v, ok := e["value"]
					if !ok {
						t.Errorf("%s/examples/%s has no value", ptr, name)
						continue
					}
					examples = append(examples, example{ptr + "/examples/" + name, v})
				}
			}
			if len(examples) == 0 {
				return
			}
			sch := compile(t, c, ptr+"/schema")
			for _, e := range examples {
				n++
				if err := sch.Validate(toInstance(t, e.value)); err != nil {
					t.Errorf("example %s does not match its schema:\n%v", e.ptr, err)
				}
			}
		}
	})
	// Schemas' own "examples" keyword (an array of values).
	schemas, _ := resolve(doc, "/components/schemas")
	for name, s := range schemas.(map[string]any) {
		exs, ok := s.(map[string]any)["examples"].([]any)
		if !ok {
			continue
		}
		sch := compile(t, c, "/components/schemas/"+name)
		for i, v := range exs {
			n++
			if err := sch.Validate(toInstance(t, v)); err != nil {
				t.Errorf("components/schemas/%s examples[%d]: %v", name, i, err)
			}
		}
	}
	if n < 20 {
		t.Errorf("only %d examples validated: the walk is missing some", n)
	}
}

// TestSchemaKeywordsAreKnown guards against typos: JSON Schema ignores an
// unknown keyword ("minimun"), which would make a rule silently vanish.
func TestSchemaKeywordsAreKnown(t *testing.T) {
	doc, _ := load(t)
	known := map[string]bool{}
	for _, k := range strings.Fields(`type properties required additionalProperties items minItems maxItems
		minimum maximum exclusiveMinimum exclusiveMaximum minLength maxLength pattern enum const format
		description title examples default $ref oneOf anyOf allOf not contentMediaType deprecated readOnly writeOnly`) {
		known[k] = true
	}
	var check func(ptr string, s map[string]any)
	check = func(ptr string, s map[string]any) {
		for k, v := range s {
			if !known[k] && !strings.HasPrefix(k, "x-") {
				t.Errorf("%s: unknown schema keyword %q", ptr, k)
			}
			switch k {
			case "properties":
				for name, p := range v.(map[string]any) {
					check(ptr+"/properties/"+name, p.(map[string]any))
				}
			case "items", "not":
				check(ptr+"/"+k, v.(map[string]any))
			case "additionalProperties":
				if m, ok := v.(map[string]any); ok {
					check(ptr+"/"+k, m)
				}
			case "oneOf", "anyOf", "allOf":
				for i, sub := range v.([]any) {
					check(fmt.Sprintf("%s/%s/%d", ptr, k, i), sub.(map[string]any))
				}
			}
		}
	}
	walk(doc, "", func(ptr string, node map[string]any) {
		if s, ok := node["schema"].(map[string]any); ok {
			check(ptr+"/schema", s)
		}
	})
	schemas, _ := resolve(doc, "/components/schemas")
	for name, s := range schemas.(map[string]any) {
		check("/components/schemas/"+name, s.(map[string]any))
	}
}

type example struct {
	ptr   string
	value any
}

type operation struct {
	path, method string
	op           map[string]any
	params       []map[string]any
	responses    map[string]map[string]any
	services     []string
}

// operations lists every operation with its path-level and operation-level
// parameters and its responses, $refs resolved.
func operations(t *testing.T, doc map[string]any) []operation {
	t.Helper()
	deref := func(v any) map[string]any {
		m := v.(map[string]any)
		if ref, ok := m["$ref"].(string); ok {
			r, err := resolve(doc, ref[1:])
			if err != nil {
				t.Fatalf("$ref %s: %v", ref, err)
			}
			return r.(map[string]any)
		}
		return m
	}
	var ops []operation
	paths := doc["paths"].(map[string]any)
	for path, item := range paths {
		item := item.(map[string]any)
		var common []map[string]any
		if ps, ok := item["parameters"].([]any); ok {
			for _, p := range ps {
				common = append(common, deref(p))
			}
		}
		for _, m := range methods {
			raw, ok := item[m].(map[string]any)
			if !ok {
				continue
			}
			op := operation{path: path, method: m, op: raw, params: append([]map[string]any(nil), common...),
				responses: map[string]map[string]any{}}
			if ps, ok := raw["parameters"].([]any); ok {
				for _, p := range ps {
					op.params = append(op.params, deref(p))
				}
			}
			if rs, ok := raw["responses"].(map[string]any); ok {
				for code, r := range rs {
					op.responses[code] = deref(r)
				}
			}
			if ss, ok := raw["x-keepwatch-services"].([]any); ok {
				for _, s := range ss {
					op.services = append(op.services, s.(string))
				}
			}
			ops = append(ops, op)
		}
	}
	sort.Slice(ops, func(i, j int) bool {
		return ops[i].path+ops[i].method < ops[j].path+ops[j].method
	})
	return ops
}

// walk calls fn for every object in v with its JSON pointer.
func walk(v any, ptr string, fn func(ptr string, node map[string]any)) {
	switch v := v.(type) {
	case map[string]any:
		fn(ptr, v)
		for k, c := range v {
			walk(c, ptr+"/"+escape(k), fn)
		}
	case []any:
		for i, c := range v {
			walk(c, ptr+"/"+strconv.Itoa(i), fn)
		}
	}
}

func escape(k string) string {
	return strings.ReplaceAll(strings.ReplaceAll(k, "~", "~0"), "/", "~1")
}

// resolve follows a JSON pointer ("/components/schemas/X") into doc.
func resolve(doc any, ptr string) (any, error) {
	cur := doc
	for _, tok := range strings.Split(strings.TrimPrefix(ptr, "/"), "/") {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		switch c := cur.(type) {
		case map[string]any:
			next, ok := c[tok]
			if !ok {
				return nil, fmt.Errorf("no %q in %s", tok, ptr)
			}
			cur = next
		case []any:
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i >= len(c) {
				return nil, fmt.Errorf("bad index %q in %s", tok, ptr)
			}
			cur = c[i]
		default:
			return nil, fmt.Errorf("%s goes through a scalar", ptr)
		}
	}
	return cur, nil
}

func compiler(t *testing.T, inst any) *jsonschema.Compiler {
	t.Helper()
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	if err := c.AddResource(docURL, inst); err != nil {
		t.Fatalf("add openapi.json to the schema compiler: %v", err)
	}
	return c
}

func compile(t *testing.T, c *jsonschema.Compiler, ptr string) *jsonschema.Schema {
	t.Helper()
	s, err := c.Compile(docURL + "#" + ptr)
	if err != nil {
		t.Fatalf("compile schema %s: %v", ptr, err)
	}
	return s
}

// toInstance converts a value decoded by encoding/json into the form the
// schema library validates (json.Number for numbers).
func toInstance(t *testing.T, v any) any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return inst
}
