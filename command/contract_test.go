package command_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/keepwatch/keepwatch"
	"github.com/keepwatch/keepwatch/api"
	"github.com/keepwatch/keepwatch/command"
)

// The contract: every body means the same to keepwatch, to a gateway that
// validates it against api/openapi.json and to encoding/json. A body is
// accepted exactly when it is valid by the document (a batch's event
// exactly when it is valid by BatchEvent), and what is stored is what
// encoding/json reads from it under the documented rounding and event time.

// contract is the OpenAPI document's request schemas and the field names
// the key rules apply to.
type contract struct {
	event, batch, batchEvent *jsonschema.Schema
	// fields are the properties of ProgressEvent, ProgressBatch and
	// BatchEvent, as the document lists them.
	eventFields, batchFields, batchEventFields []string
	maxDepth                                   int
}

func loadContract(tb testing.TB) *contract {
	tb.Helper()
	const url = "file:///keepwatch/openapi.json"
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(api.OpenAPI))
	if err != nil {
		tb.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	if err := c.AddResource(url, doc); err != nil {
		tb.Fatal(err)
	}
	compile := func(name string) *jsonschema.Schema {
		s, err := c.Compile(url + "#/components/schemas/" + name)
		if err != nil {
			tb.Fatalf("compile %s: %v", name, err)
		}
		return s
	}
	props := func(name string) []string {
		schemas := doc.(map[string]any)["components"].(map[string]any)["schemas"].(map[string]any)
		var out []string
		for k := range schemas[name].(map[string]any)["properties"].(map[string]any) {
			out = append(out, k)
		}
		slices.Sort(out)
		return out
	}
	return &contract{
		event: compile("ProgressEvent"), batch: compile("ProgressBatch"), batchEvent: compile("BatchEvent"),
		eventFields: props("ProgressEvent"), batchFields: props("ProgressBatch"), batchEventFields: props("BatchEvent"),
		maxDepth: command.DefaultConfig().MaxJSONDepth,
	}
}

// instance reads body as the schemas' instance, or says which rule of the
// document refuses it before any schema applies (the server's 400). It is
// written apart from the server's code, on encoding/json's tokenizer: the
// body must be valid UTF-8 JSON with no lone surrogate escape, no object may
// name a key twice, none may nest deeper than the limit, and an event or
// envelope may not hold a key that differs from a documented field only in
// case. fields gives the field names of the object at a JSON pointer (""
// the body, "/events/3" a batch's fourth event).
func (c *contract) instance(body []byte, fields func(path string) []string) (any, error) {
	if !utf8.Valid(body) {
		return nil, errors.New("not UTF-8")
	}
	if !json.Valid(body) {
		return nil, errors.New("not JSON")
	}
	if loneSurrogate(body) {
		return nil, errors.New("a lone surrogate escape")
	}
	type frame struct {
		obj     bool
		path    string
		keys    map[string]bool
		key     string // the last key of an object
		wantKey bool
		index   int // the next index of an array
	}
	var stack []*frame
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	childPath := func() string {
		if len(stack) == 0 {
			return ""
		}
		top := stack[len(stack)-1]
		seg := top.key
		if !top.obj {
			seg = strconv.Itoa(top.index)
		}
		return top.path + "/" + strings.NewReplacer("~", "~0", "/", "~1").Replace(seg) // a JSON pointer
	}
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if n := len(stack); n > 0 && stack[n-1].obj && stack[n-1].wantKey && tok != json.Delim('}') {
			top, k := stack[n-1], tok.(string)
			if top.keys[k] {
				return nil, fmt.Errorf("the key %q twice", k)
			}
			for _, f := range fields(top.path) {
				if k != f && strings.EqualFold(k, f) {
					return nil, fmt.Errorf("the key %q for %q", k, f)
				}
			}
			top.keys[k], top.key, top.wantKey = true, k, false
			continue
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			if len(stack) == c.maxDepth {
				return nil, errors.New("too deep")
			}
			stack = append(stack, &frame{obj: tok == json.Delim('{'), path: childPath(), keys: map[string]bool{}, wantKey: true})
			continue
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
		}
		// A value ended.
		if n := len(stack); n > 0 {
			if stack[n-1].obj {
				stack[n-1].wantKey = true
			} else {
				stack[n-1].index++
			}
		}
	}
	return jsonschema.UnmarshalJSON(bytes.NewReader(body))
}

// loneSurrogate reports whether a string of the JSON text body holds a \u
// escape of a UTF-16 surrogate that is not half of a pair.
func loneSurrogate(body []byte) bool {
	hex := func(i int) (int, bool) {
		if i+6 > len(body) || body[i] != '\\' || body[i+1] != 'u' {
			return 0, false
		}
		n, err := strconv.ParseUint(string(body[i+2:i+6]), 16, 16)
		return int(n), err == nil
	}
	in := false
	for i := 0; i < len(body); i++ {
		switch {
		case body[i] == '"':
			in = !in
		case in && body[i] == '\\':
			r, ok := hex(i)
			switch {
			case !ok:
				i++ // a one-letter escape
			case r >= 0xd800 && r < 0xdc00:
				lo, ok := hex(i + 6)
				if !ok || lo < 0xdc00 || lo > 0xdfff {
					return true
				}
				i += 11
			case r >= 0xdc00 && r <= 0xdfff:
				return true
			default:
				i += 5
			}
		}
	}
	return false
}

func (c *contract) singleFields(path string) []string {
	if path == "" {
		return c.eventFields
	}
	return nil
}

func (c *contract) batchFieldsAt(path string) []string {
	switch rest, ok := strings.CutPrefix(path, "/events/"); {
	case path == "":
		return c.batchFields
	case ok && !strings.Contains(rest, "/"):
		return c.batchEventFields
	}
	return nil
}

// goEvent is a batch's event as a Go program reads it with encoding/json:
// the documented fields, numbers as float64, null or absent as nil.
type goEvent struct {
	VideoID   string   `json:"video_id"`
	Percent   float64  `json:"percent"`
	Position  *float64 `json:"position"`
	Duration  *float64 `json:"duration"`
	TS        *float64 `json:"ts"`
	SeriesID  *string  `json:"series_id"`
	Episode   *float64 `json:"episode"`
	Completed *bool    `json:"completed"`
}

// goSingle is the body of POST /v1/progress: an event and its sent_at.
type goSingle struct {
	goEvent
	SentAt *float64 `json:"sent_at"`
}

// state is the event under the documented rules: numbers kept to three
// decimals, absent seconds Unknown, event time from the device's age.
func (g goEvent) state(e *env, sentAt *float64) keepwatch.State {
	secs := func(p *float64) float64 {
		if p == nil {
			return keepwatch.Unknown
		}
		return keepwatch.Round3(*p)
	}
	ms := func(p *float64) int64 {
		if p == nil {
			return 0
		}
		return int64(*p)
	}
	st := keepwatch.State{
		EventTime: keepwatch.EventTime(e.clock.now(), ms(g.TS), ms(sentAt), command.DefaultConfig().MaxEventAge),
		Percent:   keepwatch.Round3(g.Percent), Position: secs(g.Position), Duration: secs(g.Duration),
		Episode: secs(g.Episode),
	}
	if g.SeriesID != nil {
		st.SeriesID = *g.SeriesID
	}
	if g.Completed != nil {
		st.Completed = *g.Completed
	}
	return st
}

// stored reads the user's pending entries back from Redis.
func stored(e *env, user string) (map[string]keepwatch.State, error) {
	ps, err := e.buf.Pending(context.Background(), user)
	if err != nil {
		return nil, err
	}
	m := make(map[string]keepwatch.State, len(ps))
	for _, p := range ps {
		m[p.VideoID] = p.State
	}
	return m, nil
}

// checkSingle posts body to POST /v1/progress as a new user and checks the
// contract, returning the status.
func (c *contract) checkSingle(t *testing.T, e *env, body []byte) int {
	t.Helper()
	user := e.user("c")
	r, err := e.try(req{path: "/v1/progress", body: string(body), auth: "Bearer " + token(t, user)})
	if err != nil {
		t.Fatal(err)
	}
	inst, why := c.instance(body, c.singleFields)
	var verr error
	if why == nil {
		verr = c.event.Validate(inst)
	}
	valid := why == nil && verr == nil
	if (r.status == http.StatusAccepted) != valid {
		t.Fatalf("%q: server %d %s; document: not an instance: %v; schema: %v", body, r.status, r.body, why, verr)
	}
	got, err := stored(e, user)
	if err != nil {
		t.Fatal(err)
	}
	if r.status != http.StatusAccepted {
		if len(got) != 0 {
			t.Fatalf("%q: %d, yet stored %v", body, r.status, got)
		}
		return r.status
	}
	var g goSingle
	if err := json.Unmarshal(body, &g); err != nil {
		t.Fatalf("%q: accepted, encoding/json refuses it: %v", body, err)
	}
	want := map[string]keepwatch.State{g.VideoID: g.state(e, g.SentAt)}
	if !mapsEqual(got, want) {
		t.Fatalf("%q: stored %v, encoding/json reads %v", body, got, want)
	}
	return r.status
}

// checkBatch is checkSingle for POST /v1/progress/batch, with each event's
// fate held to BatchEvent.
func (c *contract) checkBatch(t *testing.T, e *env, body []byte) int {
	t.Helper()
	user := e.user("c")
	r, err := e.try(req{path: "/v1/progress/batch", body: string(body), auth: "Bearer " + token(t, user)})
	if err != nil {
		t.Fatal(err)
	}
	got, err := stored(e, user)
	if err != nil {
		t.Fatal(err)
	}
	inst, why := c.instance(body, c.batchFieldsAt)
	if why != nil {
		if r.status != http.StatusBadRequest || len(got) != 0 {
			t.Fatalf("%q: server %d %s (stored %v); the document refuses it: %v", body, r.status, r.body, got, why)
		}
		return r.status
	}
	// The envelope is valid when the body with every event replaced by a
	// valid one is; each event is valid on its own.
	var validIdx []int
	envelope := inst
	if m, ok := inst.(map[string]any); ok {
		if evs, ok := m["events"].([]any); ok {
			placeholder := map[string]any{"video_id": "v", "percent": json.Number("1")}
			stand := make([]any, len(evs))
			for i, ev := range evs {
				stand[i] = placeholder
				if c.batchEvent.Validate(ev) == nil {
					validIdx = append(validIdx, i)
				}
			}
			env := make(map[string]any, len(m))
			for k, v := range m {
				env[k] = v
			}
			env["events"] = stand
			envelope = env
		}
	}
	verr := c.batch.Validate(envelope)
	valid := verr == nil && len(validIdx) > 0
	if (r.status == http.StatusAccepted) != valid {
		t.Fatalf("%q: server %d %s; envelope: %v; valid events %v", body, r.status, r.body, verr, validIdx)
	}
	if r.status != http.StatusAccepted {
		if len(got) != 0 {
			t.Fatalf("%q: %d, yet stored %v", body, r.status, got)
		}
		return r.status
	}
	var a batchAnswer
	if err := json.Unmarshal(r.body, &a); err != nil {
		t.Fatal(err)
	}
	var rejected []int
	for _, rj := range a.Rejected {
		rejected = append(rejected, rj.Index)
	}
	var wantRejected []int
	n := len(inst.(map[string]any)["events"].([]any))
	for i := range n {
		if !slices.Contains(validIdx, i) {
			wantRejected = append(wantRejected, i)
		}
	}
	if a.Accepted != len(validIdx) || !slices.Equal(rejected, wantRejected) {
		t.Fatalf("%q: accepted %d, rejected %v; the document: valid %v", body, a.Accepted, rejected, validIdx)
	}
	var gb struct {
		SentAt *float64          `json:"sent_at"`
		Events []json.RawMessage `json:"events"`
	}
	if err := json.Unmarshal(body, &gb); err != nil {
		t.Fatalf("%q: accepted, encoding/json refuses it: %v", body, err)
	}
	want := map[string]keepwatch.State{}
	for _, i := range validIdx {
		var g goEvent
		if err := json.Unmarshal(gb.Events[i], &g); err != nil {
			t.Fatalf("%q: event %d accepted, encoding/json refuses it: %v", body, i, err)
		}
		if st, ok := want[g.VideoID]; !ok || g.state(e, gb.SentAt).Newer(st) {
			want[g.VideoID] = g.state(e, gb.SentAt)
		}
	}
	if !mapsEqual(got, want) {
		t.Fatalf("%q: stored %v, encoding/json reads %v", body, got, want)
	}
	return r.status
}

// TestContract runs the corpus through the real server and the OpenAPI
// document: each body gets the status its line names, the server and the
// document agree on it, and what is stored is what encoding/json reads.
func TestContract(t *testing.T) {
	c := loadContract(t)
	e := newEnv(t)
	for _, file := range []struct {
		name  string
		check func(*testing.T, *env, []byte) int
	}{{"single.txt", c.checkSingle}, {"batch.txt", c.checkBatch}} {
		for _, tc := range command.ReadCorpus(t, file.name) {
			t.Run(strings.TrimSuffix(file.name, ".txt")+"/"+tc.Name, func(t *testing.T) {
				if got := file.check(t, e, tc.Body); got != tc.Status {
					t.Errorf("%q: status %d, the corpus says %d", tc.Body, got, tc.Status)
				}
			})
		}
	}
}

// FuzzContract holds any single body to the contract; its seeds are the
// corpus and testdata/fuzz/FuzzContract.
func FuzzContract(f *testing.F) {
	fuzzContract(f, "single.txt", (*contract).checkSingle)
}

// FuzzContractBatch is FuzzContract for batches.
func FuzzContractBatch(f *testing.F) {
	fuzzContract(f, "batch.txt", (*contract).checkBatch)
}

func fuzzContract(f *testing.F, corpus string, check func(*contract, *testing.T, *env, []byte) int) {
	for _, tc := range command.ReadCorpus(f, corpus) {
		f.Add(tc.Body)
	}
	c, e := loadContract(f), newEnv(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		if hugeExponent(body) {
			return
		}
		// Fuzzing runs for minutes: keep the service's clock on the real
		// one, which mints the tokens, or their iat would soon lie in its
		// future.
		e.clock.set(time.Now())
		check(c, t, e, body)
	})
}

// hugeExponent reports an exponent of five digits or more: the schema
// library would build the number (10^99999 and up) as an exact fraction,
// which takes it seconds to minutes. The corpus holds such numbers
// (percent-huge-exponent); the fuzzers leave them out.
func hugeExponent(body []byte) bool {
	for i := 0; i < len(body); i++ {
		if body[i] != 'e' && body[i] != 'E' {
			continue
		}
		j := i + 1
		if j < len(body) && (body[j] == '+' || body[j] == '-') {
			j++
		}
		k := j
		for k < len(body) && body[k] >= '0' && body[k] <= '9' {
			k++
		}
		if k-j >= 5 {
			return true
		}
	}
	return false
}
