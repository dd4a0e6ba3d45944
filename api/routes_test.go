package api_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/keepwatch/keepwatch/api"
	"github.com/keepwatch/keepwatch/command"
	"github.com/keepwatch/keepwatch/internal/auth"
	"github.com/keepwatch/keepwatch/internal/edge"
	"github.com/keepwatch/keepwatch/internal/testenv"
	"github.com/keepwatch/keepwatch/migrations"
	"github.com/keepwatch/keepwatch/query"
	kwmongo "github.com/keepwatch/keepwatch/storage/mongo"
	"github.com/keepwatch/keepwatch/storage/redisbuf"
)

const (
	secret     = "api-test-secret"
	adminToken = "api-test-admin"
)

// services builds the real command and query apps on a real redis-server and
// the MongoDB test server, with pprof on so that every route is registered.
func services(t *testing.T) (cmdApp, queryApp *fiber.App) {
	t.Helper()
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	rs := testenv.StartRedis(t)
	rc := redis.NewClient(&redis.Options{Addr: rs.Addr})
	t.Cleanup(func() { _ = rc.Close() })
	buf, err := redisbuf.New(rc, redisbuf.Options{Shards: 4, HighWater: 1000})
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := auth.NewVerifier([]string{secret}, 100)
	if err != nil {
		t.Fatal(err)
	}
	cfg := command.DefaultEdge()
	cfg.AdminToken = adminToken
	cfg.OpenAPI = api.OpenAPI
	reg := prometheus.NewRegistry()
	cmdShell, err := edge.New(cfg, edge.Deps{Verifier: verifier, Ready: buf.Ping, Registerer: reg, Gatherer: reg, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	cmd, err := command.New(command.DefaultConfig(), cmdShell, buf, reg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmdShell.Shutdown(context.Background())
		cmd.Close()
	})

	m := testenv.StartMongo(t)
	store, err := kwmongo.Open(ctx, kwmongo.Options{URI: m.URI, Database: m.Database, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close(context.Background()) })
	if err := migrations.Up(ctx, store.Database(), log); err != nil {
		t.Fatal(err)
	}
	reader, err := store.Reader(kwmongo.ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	qcfg := query.DefaultEdge()
	qcfg.AdminToken = adminToken
	qcfg.OpenAPI = api.OpenAPI
	qreg := prometheus.NewRegistry()
	queryShell, err := edge.New(qcfg, edge.Deps{Verifier: verifier, Ready: store.Ping, Registerer: qreg, Gatherer: qreg, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := query.New(query.Config{Overlay: true}, queryShell, query.Deps{Store: reader, Export: reader, Pending: buf}, qreg); err != nil {
		t.Fatal(err)
	}
	return cmdShell.App(), queryShell.App()
}

var fiberParam = regexp.MustCompile(`:([A-Za-z0-9_]+)\??`)

// toTemplate turns a Fiber path (/v1/progress/:video_id) into an OpenAPI one.
func toTemplate(p string) string { return fiberParam.ReplaceAllString(p, "{$1}") }

// matches reports whether a concrete or templated path fits a documented
// template, a {param} segment matching any one segment.
func matches(template, path string) bool {
	ts, ps := strings.Split(template, "/"), strings.Split(path, "/")
	if len(ts) != len(ps) {
		return false
	}
	for i := range ts {
		if ts[i] != ps[i] && !(strings.HasPrefix(ts[i], "{") && ps[i] != "") {
			return false
		}
	}
	return true
}

// TestRoutesAreDocumented checks both ways, per service: every route the app
// registers is documented for that service, and every operation documented
// for the service is a route of its app.
func TestRoutesAreDocumented(t *testing.T) {
	doc, _ := load(t)
	cmdApp, queryApp := services(t)
	ops := operations(t, doc)
	for _, svc := range []struct {
		name string
		app  *fiber.App
	}{{"command", cmdApp}, {"query", queryApp}} {
		t.Run(svc.name, func(t *testing.T) {
			type route struct{ method, path string }
			var routes []route
			var prefixes []string // app.Use mounts, e.g. query's pprof
			for _, r := range svc.app.GetRoutes() {
				if r.Method == fiber.MethodHead || r.Method == fiber.MethodOptions || r.Path == "/" {
					continue // Fiber adds HEAD to every GET; "/" is global middleware
				}
				if strings.Count(r.Path, "/") >= 1 && len(r.Handlers) > 0 && isUse(svc.app, r) {
					prefixes = append(prefixes, r.Path)
					continue
				}
				routes = append(routes, route{strings.ToLower(r.Method), toTemplate(r.Path)})
			}
			if len(routes) < 5 {
				t.Fatalf("only %d routes: %v", len(routes), routes)
			}
			for _, r := range routes {
				found := false
				for _, op := range ops {
					found = found || (op.method == r.method && matches(op.path, r.path) && contains(op.services, svc.name))
				}
				if !found {
					t.Errorf("route %s %s is not documented for the %s service", strings.ToUpper(r.method), r.path, svc.name)
				}
			}
			for _, op := range ops {
				if !contains(op.services, svc.name) {
					continue
				}
				found := false
				for _, r := range routes {
					found = found || (op.method == r.method && matches(op.path, r.path))
				}
				for _, p := range prefixes {
					found = found || strings.HasPrefix(op.path, strings.TrimSuffix(p, "/")+"/")
				}
				if !found {
					t.Errorf("documented %s %s is not a route of the %s service", strings.ToUpper(op.method), op.path, svc.name)
				}
			}
		})
	}
}

// isUse tells an app.Use mount from a route: Fiber lists a Use mount once per
// method with the same path, and GetRoutes(true) leaves it out.
func isUse(app *fiber.App, r fiber.Route) bool {
	for _, f := range app.GetRoutes(true) {
		if f.Method == r.Method && f.Path == r.Path {
			return false
		}
	}
	return true
}

func contains(l []string, v string) bool {
	for _, s := range l {
		if s == v {
			return true
		}
	}
	return false
}

// TestRealResponsesMatchTheDocument sends requests that produce each
// documented status to the real apps and validates every answer's status,
// media type and body against the document.
func TestRealResponsesMatchTheDocument(t *testing.T) {
	doc, inst := load(t)
	c := compiler(t, inst)
	cmdApp, queryApp := services(t)
	urls := map[*fiber.App]string{cmdApp: serve(t, cmdApp), queryApp: serve(t, queryApp)}
	ops := operations(t, doc)
	tok := token(t, "alice", time.Hour)
	expired := token(t, "alice", -time.Hour)
	const body = `{"video_id":"tt0903747:s01e01","percent":42.5,"position":1234.5,"duration":2700,"ts":1732240000000,"sent_at":1732240000350}`

	type req struct {
		app                       *fiber.App
		method, path, body, ctype string
		auth                      string
		want                      int
		header                    http.Header // more headers, added
	}
	etag := ""
	reqs := []req{
		{app: cmdApp, method: "POST", path: "/v1/progress", body: body, ctype: "application/json", auth: tok, want: 202},
		{app: cmdApp, method: "POST", path: "/v1/progress", body: `{"video_id":"a b","percent":142}`, ctype: "application/json", auth: tok, want: 422},
		{app: cmdApp, method: "POST", path: "/v1/progress", body: `{"video_id":`, ctype: "application/json", auth: tok, want: 400},
		{app: cmdApp, method: "POST", path: "/v1/progress", body: body, ctype: "text/plain", auth: tok, want: 415},
		{app: cmdApp, method: "POST", path: "/v1/progress", body: body, ctype: "application/json", auth: expired, want: 401},
		{app: cmdApp, method: "POST", path: "/v1/progress", body: `{"video_id":"x","percent":1,"pad":"` + strings.Repeat("x", 70000) + `"}`, ctype: "application/json", auth: tok, want: 413},
		{app: cmdApp, method: "POST", path: "/v1/progress/batch", ctype: "application/json", auth: tok, want: 202,
			body: `{"sent_at":1732240600000,"events":[{"video_id":"v-123","percent":40,"ts":1732240000000},{"video_id":"v-123","percent":-1}]}`},
		{app: cmdApp, method: "POST", path: "/v1/progress/batch", ctype: "application/json", auth: tok, want: 422,
			body: `{"events":[{"video_id":"v-123","percent":-1}]}`},
		{app: cmdApp, method: "DELETE", path: "/v1/progress/gone?ts=1732240000000&sent_at=1732240000350", auth: tok, want: 202},
		{app: cmdApp, method: "DELETE", path: "/v1/progress/gone?ts=soon", auth: tok, want: 422},
		{app: cmdApp, method: "DELETE", path: "/v1/progress?ts=1732240000000&sent_at=1732240000350", auth: token(t, "erased", time.Hour), want: 202},
		{app: cmdApp, method: "DELETE", path: "/v1/progress?sent_at=-1", auth: tok, want: 422},
		{app: queryApp, method: "GET", path: "/v1/keep-watching?limit=20", auth: tok, want: 200},
		{app: queryApp, method: "GET", path: "/v1/keep-watching?limit=0", auth: tok, want: 422},
		{app: queryApp, method: "GET", path: "/v1/keep-watching?group=none", auth: tok, want: 200},
		{app: queryApp, method: "GET", path: "/v1/keep-watching?group=seasons", auth: tok, want: 422},
		{app: queryApp, method: "GET", path: "/v1/export", auth: tok, want: 200},
		{app: queryApp, method: "GET", path: "/v1/export", auth: expired, want: 401},
		{app: queryApp, method: "GET", path: "/v1/keep-watching", auth: expired, want: 401},
		{app: queryApp, method: "GET", path: "/v1/progress?video_ids=tt0903747:s01e01,v-123,none", auth: tok, want: 200},
		{app: queryApp, method: "GET", path: "/v1/progress/tt0903747:s01e01", auth: tok, want: 200},
		{app: queryApp, method: "GET", path: "/v1/progress/never-watched", auth: tok, want: 404},
		{app: queryApp, method: "GET", path: "/v1/progress/tt0903747:s01e01", auth: tok, want: 304},
		// The edge's answers: two Authorization headers, and headers over
		// --max-header-bytes.
		{app: queryApp, method: "GET", path: "/v1/keep-watching", auth: tok, want: 400,
			header: http.Header{"Authorization": {"Bearer " + tok}}},
		{app: queryApp, method: "GET", path: "/v1/progress?video_ids=a", auth: tok, want: 431,
			header: http.Header{"X-Padding": {strings.Repeat("p", 40<<10)}}},
	}
	for _, app := range []*fiber.App{cmdApp, queryApp} {
		for _, p := range []string{"/healthz", "/readyz", "/openapi.json", "/metrics"} {
			reqs = append(reqs, req{app: app, method: "GET", path: p, want: 200})
		}
		reqs = append(reqs,
			req{app: app, method: "GET", path: "/debug/pprof/heap", want: 401},
			req{app: app, method: "GET", path: "/debug/pprof/heap?debug=1", auth: adminToken, want: 200})
	}
	seen := map[string]bool{}
	for _, r := range reqs {
		name := r.method + " " + r.path
		if len(name) > 60 {
			name = name[:60]
		}
		hreq := httptest.NewRequest(r.method, r.path, strings.NewReader(r.body))
		if r.ctype != "" {
			hreq.Header.Set("Content-Type", r.ctype)
		}
		if r.auth != "" {
			hreq.Header.Set("Authorization", "Bearer "+r.auth)
		}
		if r.want == 304 {
			hreq.Header.Set("If-None-Match", etag)
		}
		for k, vs := range r.header {
			for _, v := range vs {
				hreq.Header.Add(k, v)
			}
		}
		hreq.URL.Scheme, hreq.URL.Host, hreq.RequestURI = "http", urls[r.app], ""
		resp, err := http.DefaultClient.Do(hreq)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != r.want {
			t.Errorf("%s: status %d, want %d: %s", name, resp.StatusCode, r.want, b)
			continue
		}
		if r.want == 200 && strings.HasPrefix(r.path, "/v1/progress/") {
			etag = resp.Header.Get("ETag")
		}
		path, _, _ := strings.Cut(r.path, "?")
		var op *operation
		for i := range ops {
			if ops[i].method == strings.ToLower(r.method) && matches(ops[i].path, path) && (op == nil || !strings.Contains(ops[i].path, "{")) {
				op = &ops[i]
			}
		}
		if op == nil {
			t.Errorf("%s: no documented operation", name)
			continue
		}
		code := resp.Status[:3]
		seen[op.method+" "+op.path+" "+code] = true
		res, ok := op.responses[code]
		if !ok {
			t.Errorf("%s: status %s is not documented for %s %s", name, code, op.method, op.path)
			continue
		}
		for h := range mapping(res["headers"]) {
			if resp.Header.Get(h) == "" && h != "X-Keepwatch-Overlay" { // sent only when Redis is down
				t.Errorf("%s: documented header %s is missing", name, h)
			}
		}
		content := mapping(res["content"])
		if len(content) == 0 {
			if len(b) != 0 {
				t.Errorf("%s: documented without a body, got %q", name, b)
			}
			continue
		}
		ct, _, _ := strings.Cut(resp.Header.Get("Content-Type"), ";")
		_, ok = content[ct]
		if !ok {
			t.Errorf("%s: media type %q is not documented (have %v)", name, ct, keys(content))
			continue
		}
		if !strings.Contains(ct, "json") {
			continue
		}
		ptr := "/paths/" + escape(op.path) + "/" + op.method + "/responses/" + code
		if ref, ok := rawResponse(doc, op, code)["$ref"].(string); ok {
			ptr = ref[1:]
		}
		schema := compile(t, c, ptr+"/content/"+escape(ct)+"/schema")
		// NDJSON's schema is a line's.
		docs := []string{string(b)}
		if ct == "application/x-ndjson" {
			docs = strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
		}
		for _, d := range docs {
			v, err := jsonschema.UnmarshalJSON(strings.NewReader(d))
			if err != nil {
				t.Errorf("%s: body is not JSON: %v", name, err)
				continue
			}
			if err := schema.Validate(v); err != nil {
				t.Errorf("%s: body does not match the documented schema: %v\n%s", name, err, d)
			}
		}
	}
	t.Logf("validated %d documented responses against real answers", len(seen))
}

func rawResponse(doc map[string]any, op *operation, code string) map[string]any {
	return mapping(mapping(mapping(op.op["responses"]))[code])
}

func mapping(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

func keys(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func token(t *testing.T, user string, ttl time.Duration) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": user, "exp": time.Now().Add(ttl).Unix()}).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// serve serves app on a free local port until the test ends and returns its
// host:port.
func serve(t *testing.T, app *fiber.App) string {
	t.Helper()
	return testenv.ServeLocal(t, testenv.App{App: app})
}
