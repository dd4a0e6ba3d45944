package edge_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepwatch/keepwatch/internal/auth"
	"github.com/keepwatch/keepwatch/internal/edge"
	"github.com/keepwatch/keepwatch/internal/testenv"
)

const secret = "edge-test-secret"

// testEdge is a shell with two routes of its own, a real token verifier and
// its own registry.
type testEdge struct {
	t      *testing.T
	shell  *edge.Shell
	reg    *prometheus.Registry
	served atomic.Int64          // requests that reached a route's handler
	ready  atomic.Pointer[error] // what Ready returns (nil: nil)
}

func defaults() edge.Config {
	return edge.Config{ReadTimeout: time.Minute, IdleTimeout: time.Minute, MaxConns: 1000,
		MaxHeaderBytes: 4096, BodyLimit: 1024, Grace: time.Second}
}

func newEdge(t *testing.T, mods ...func(*edge.Config)) *testEdge {
	t.Helper()
	cfg := defaults()
	for _, m := range mods {
		m(&cfg)
	}
	v, err := auth.NewVerifier([]string{secret}, 100)
	if err != nil {
		t.Fatal(err)
	}
	e := &testEdge{t: t, reg: prometheus.NewRegistry()}
	ready := func(context.Context) error {
		if err := e.ready.Load(); err != nil {
			return *err
		}
		return nil
	}
	e.shell, err = edge.New(cfg, edge.Deps{Verifier: v, Ready: ready, Registerer: e.reg, Gatherer: e.reg,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	e.shell.Handle(fiber.MethodPost, "/v1/things", fiber.StatusOK, func(c *fiber.Ctx, _ time.Time) error {
		e.served.Add(1)
		return c.SendString(fmt.Sprintf("%d bytes", len(c.Body())))
	})
	e.shell.Handle(fiber.MethodGet, "/v1/things/:id", fiber.StatusOK, func(c *fiber.Ctx, recv time.Time) error {
		user, _, err := e.shell.User(c, recv)
		if err != nil {
			return err
		}
		e.served.Add(1)
		return c.SendString(user + " " + edge.Param(c, "id"))
	})
	return e
}

// listen serves the shell on a local port until the test ends.
func (e *testEdge) listen() string { return testenv.ServeLocal(e.t, e.shell) }

func (e *testEdge) do(req *http.Request) (*http.Response, string) {
	e.t.Helper()
	resp, err := e.shell.App().Test(req, 10_000)
	if err != nil {
		e.t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	return resp, string(b)
}

func token(t *testing.T, user string) string {
	t.Helper()
	tok, err := auth.Mint(secret, user, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

type problem struct {
	Type   string `json:"type"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
}

// parseProblem checks that body is problem details of status.
func parseProblem(t *testing.T, resp *http.Response, body string, status int) problem {
	t.Helper()
	if resp.StatusCode != status || resp.Header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("status %d (%s), want %d problem+json: %s", resp.StatusCode, resp.Header.Get("Content-Type"), status, body)
	}
	var p problem
	if err := json.Unmarshal([]byte(body), &p); err != nil || p.Status != status {
		t.Fatalf("not a problem of status %d: %s", status, body)
	}
	return p
}

// exchange writes raw on a new connection and reads until the server closes
// it or 5 s pass; closed tells which.
func exchange(t *testing.T, addr, raw string) (got string, closed bool) {
	t.Helper()
	return testenv.Exchange(t, addr, raw, 5*time.Second)
}

// TestAmbiguousFramingIsRefused guards against request smuggling: a request
// whose length two parsers could read apart (RFC 9112 6.3) is answered 400
// and its connection closed, so the bytes after it, which a proxy may have
// read as the start of the body and fasthttp as the next request, are never
// served. Its handler never runs.
func TestAmbiguousFramingIsRefused(t *testing.T) {
	e := newEdge(t)
	addr := e.listen()
	const chunked = "5\r\nhello\r\n0\r\n\r\n"
	const smuggled = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
	for name, head := range map[string]string{
		"Content-Length then Transfer-Encoding": "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
		"Transfer-Encoding then Content-Length": "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
		"lower-case names":                      "transfer-encoding: chunked\r\ncontent-length: 0\r\n",
		"Transfer-Encoding identity and length": "Transfer-Encoding: identity\r\nContent-Length: " + fmt.Sprint(len(chunked)) + "\r\n",
		"two different Content-Lengths":         "Content-Length: 5\r\nContent-Length: " + fmt.Sprint(len(chunked)) + "\r\n",
		"a coding other than chunked":           "Transfer-Encoding: gzip\r\n",
		"chunked twice":                         "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			before := e.served.Load()
			got, closed := exchange(t, addr, "POST /v1/things HTTP/1.1\r\nHost: x\r\n"+head+"\r\n"+chunked+smuggled)
			if !strings.HasPrefix(got, "HTTP/1.1 400 ") || !strings.Contains(got, "application/problem+json") {
				t.Fatalf("answer %q, want 400 problem details", got)
			}
			if !closed || strings.Count(got, "HTTP/1.1 ") != 1 {
				t.Fatalf("the connection was not closed after the 400 (closed %v), or the bytes after the request were served:\n%s", closed, got)
			}
			if e.served.Load() != before {
				t.Fatal("the handler ran")
			}
		})
	}
	// What is not ambiguous is served, on a connection kept alive.
	for name, req := range map[string]string{
		"Content-Length":             "Content-Length: 5\r\n\r\nhello",
		"the same Content-Length":    "Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
		"chunked":                    "Transfer-Encoding: chunked\r\n\r\n" + chunked,
		"Chunked, another spelling":  "Transfer-Encoding: Chunked\r\n\r\n" + chunked,
		"no body and no length head": "\r\n",
	} {
		t.Run("served: "+name, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			r := bufio.NewReader(c)
			for i := range 2 {
				if _, err := io.WriteString(c, "POST /v1/things HTTP/1.1\r\nHost: x\r\n"+req); err != nil {
					t.Fatal(err)
				}
				resp, err := http.ReadResponse(r, nil)
				if err != nil {
					t.Fatalf("request %d: %v", i+1, err)
				}
				body, _ := io.ReadAll(resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode != 200 || resp.Close {
					t.Fatalf("request %d: %d %s (close %v)", i+1, resp.StatusCode, body, resp.Close)
				}
			}
		})
	}
}

// TestHeadersOverTheLimit: a request line and headers larger than
// MaxHeaderBytes get 431 with problem details, not a bare 400.
func TestHeadersOverTheLimit(t *testing.T) {
	e := newEdge(t, func(c *edge.Config) { c.MaxHeaderBytes = 2048 })
	addr := e.listen()
	fits := "GET /healthz?" + strings.Repeat("a", 1800) + " HTTP/1.1\r\nHost: x\r\n\r\n"
	if got, _ := exchange(t, addr, fits+"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); !strings.HasPrefix(got, "HTTP/1.1 200 ") {
		t.Fatalf("a request within the limit: %q", got)
	}
	got, _ := exchange(t, addr, "GET /healthz?"+strings.Repeat("a", 2100)+" HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(got)), nil)
	if err != nil {
		t.Fatalf("%v: %q", err, got)
	}
	body, _ := io.ReadAll(resp.Body)
	if p := parseProblem(t, resp, string(body), http.StatusRequestHeaderFieldsTooLarge); p.Type != "urn:keepwatch:problem:headers_too_large" {
		t.Fatalf("problem type %q", p.Type)
	}
}

// TestAuthorization: one bearer parser for every service. The scheme is
// case-insensitive; two Authorization headers are 400 (a proxy and keepwatch
// could each read another); every 401 carries WWW-Authenticate: Bearer, with
// error="invalid_token" when a token was sent (RFC 6750 3).
func TestAuthorization(t *testing.T) {
	e := newEdge(t, func(c *edge.Config) { c.AdminToken = "adm1n" })
	tok := token(t, "alice")
	for name, tc := range map[string]struct {
		headers   []string
		status    int
		challenge string
	}{
		"bearer":                {[]string{"Bearer " + tok}, 200, ""},
		"lower-case scheme":     {[]string{"bearer " + tok}, 200, ""},
		"two spaces":            {[]string{"Bearer  " + tok}, 200, ""},
		"none":                  {nil, 401, "Bearer"},
		"basic":                 {[]string{"Basic YWxpY2U6eA=="}, 401, "Bearer"},
		"scheme only":           {[]string{"Bearer"}, 401, "Bearer"},
		"bad token":             {[]string{"Bearer abc.def.ghi"}, 401, `Bearer error="invalid_token"`},
		"two headers":           {[]string{"Bearer " + tok, "Bearer " + token(t, "mallory")}, 400, ""},
		"two headers, one good": {[]string{"Basic x", "Bearer " + tok}, 400, ""},
	} {
		t.Run(name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, "/v1/things/x", nil)
			for _, h := range tc.headers {
				req.Header.Add("Authorization", h)
			}
			resp, body := e.do(req)
			if tc.status == 200 {
				if resp.StatusCode != 200 || body != "alice x" {
					t.Fatalf("%d %s", resp.StatusCode, body)
				}
				return
			}
			parseProblem(t, resp, body, tc.status)
			if got := resp.Header.Get("WWW-Authenticate"); got != tc.challenge {
				t.Fatalf("WWW-Authenticate %q, want %q", got, tc.challenge)
			}
		})
	}
	t.Run("admin token", func(t *testing.T) {
		for auth, want := range map[string]string{"": "Bearer", "Bearer adm1m": `Bearer error="invalid_token"`} {
			req := httptest.NewRequest(http.MethodGet, "/debug/pprof/heap", nil)
			if auth != "" {
				req.Header.Set("Authorization", auth)
			}
			resp, body := e.do(req)
			parseProblem(t, resp, body, 401)
			if got := resp.Header.Get("WWW-Authenticate"); got != want {
				t.Fatalf("pprof with %q: WWW-Authenticate %q, want %q", auth, got, want)
			}
		}
	})
}

// TestMethodNotAllowed: a path the service serves, asked with another
// method, is 405 with Allow, not 404.
func TestMethodNotAllowed(t *testing.T) {
	e := newEdge(t)
	for path, allow := range map[string]string{"/v1/things": "POST", "/v1/things/x": "GET, HEAD", "/healthz": "GET, HEAD"} {
		resp, body := e.do(httptest.NewRequest(http.MethodDelete, path, nil))
		if p := parseProblem(t, resp, body, http.StatusMethodNotAllowed); p.Type != "urn:keepwatch:problem:method_not_allowed" {
			t.Fatalf("%s: type %q", path, p.Type)
		}
		if got := resp.Header.Get("Allow"); got != allow {
			t.Fatalf("DELETE %s: Allow %q, want %q", path, got, allow)
		}
	}
	resp, body := e.do(httptest.NewRequest(http.MethodDelete, "/v1/nothing", nil))
	parseProblem(t, resp, body, http.StatusNotFound)
}

// TestPathParametersArePercentDecoded: browsers encode path segments
// (encodeURIComponent("ep:1") is "ep%3A1"); handlers see the decoded value.
func TestPathParametersArePercentDecoded(t *testing.T) {
	e := newEdge(t)
	for raw, want := range map[string]string{"ep%3A1": "ep:1", "ep:1": "ep:1", "a%2Eb": "a.b"} {
		req := httptest.NewRequest(http.MethodGet, "/v1/things/"+raw, nil)
		req.Header.Set("Authorization", "Bearer "+token(t, "u"))
		if resp, body := e.do(req); resp.StatusCode != 200 || body != "u "+want {
			t.Errorf("%s: %d %q, want %q", raw, resp.StatusCode, body, "u "+want)
		}
	}
}

// TestRequestMetrics: one route label convention, {param} in the label,
// unknown paths counted as "other", and requests refused before their
// handler (a body over the limit) under their route.
func TestRequestMetrics(t *testing.T) {
	e := newEdge(t)
	addr := e.listen()
	req := func(method, path, body string) {
		r, _ := http.NewRequest(method, "http://"+addr+path, strings.NewReader(body))
		r.Header.Set("Authorization", "Bearer "+token(t, "u"))
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
	}
	req("GET", "/v1/things/a", "")
	req("GET", "/v1/things/b", "")
	req("GET", "/no/such/path", "")
	req("GET", "/v1/things", "")
	req("POST", "/v1/things", strings.Repeat("x", 2000))
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	for _, want := range []string{
		`keepwatch_http_request_duration_seconds_count{code="200",route="/v1/things/{id}"} 2`,
		`keepwatch_http_request_duration_seconds_count{code="404",route="other"} 1`,
		`keepwatch_http_request_duration_seconds_count{code="405",route="/v1/things"} 1`,
		`keepwatch_http_request_duration_seconds_count{code="413",route="/v1/things"} 1`,
		`keepwatch_http_request_duration_seconds_count{code="200",route="/readyz"} 0`,
		`keepwatch_ready 1`,
		`keepwatch_http_max_connections 1000`,
	} {
		if !strings.Contains(string(body), want+"\n") {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestReadiness: /readyz asks the service's dependencies, and says 503 from
// the moment the shell drains; /healthz stays 200.
func TestReadiness(t *testing.T) {
	e := newEdge(t)
	get := func(path string) int {
		resp, _ := e.do(httptest.NewRequest(http.MethodGet, path, nil))
		return resp.StatusCode
	}
	if s := get("/readyz"); s != 200 {
		t.Fatalf("readyz %d", s)
	}
	down := errors.New("mongodb: connection refused")
	e.ready.Store(&down)
	if s := get("/readyz"); s != 503 {
		t.Fatalf("readyz with a dependency down: %d", s)
	}
	e.ready.Store(nil)
	if s := get("/readyz"); s != 200 {
		t.Fatalf("readyz with the dependency back: %d", s)
	}
	e.shell.Drain()
	if s, h := get("/readyz"), get("/healthz"); s != 503 || h != 200 {
		t.Fatalf("draining: readyz %d, healthz %d", s, h)
	}
}

// TestCORS is the one CORS implementation of both APIs: off without origins;
// with them, a preflight from a listed origin gets the service's methods and
// headers and a long max-age (so a page being hidden finds it cached for its
// keepalive fetch), answers carry Access-Control-Allow-Origin, and another
// origin gets nothing.
func TestCORS(t *testing.T) {
	const origin = "https://player.example.com"
	policy := edge.CORS{Methods: "POST,DELETE", Headers: "Authorization,Content-Type", Expose: "Retry-After"}
	preflight := func(e *testEdge, from string) *http.Response {
		req := httptest.NewRequest(http.MethodOptions, "/v1/things", nil)
		req.Header.Set("Origin", from)
		req.Header.Set("Access-Control-Request-Method", "POST")
		req.Header.Set("Access-Control-Request-Headers", "authorization,content-type")
		resp, _ := e.do(req)
		return resp
	}
	t.Run("off by default", func(t *testing.T) {
		e := newEdge(t, func(c *edge.Config) { c.CORS = policy })
		if resp := preflight(e, origin); resp.Header.Get("Access-Control-Allow-Origin") != "" {
			t.Fatalf("preflight answered with CORS off: %v", resp.Header)
		}
	})
	t.Run("on", func(t *testing.T) {
		e := newEdge(t, func(c *edge.Config) { c.CORS = policy; c.CORS.Origins = []string{origin} })
		resp := preflight(e, origin)
		h := resp.Header
		if resp.StatusCode != 204 || h.Get("Access-Control-Allow-Origin") != origin || h.Get("Access-Control-Allow-Methods") != "POST,DELETE" ||
			h.Get("Access-Control-Allow-Headers") != "Authorization,Content-Type" || h.Get("Access-Control-Max-Age") != "7200" {
			t.Fatalf("preflight: %d %v", resp.StatusCode, h)
		}
		req := httptest.NewRequest(http.MethodPost, "/v1/things", strings.NewReader("x"))
		req.Header.Set("Origin", origin)
		resp, _ = e.do(req)
		if resp.StatusCode != 200 || resp.Header.Get("Access-Control-Allow-Origin") != origin || resp.Header.Get("Access-Control-Expose-Headers") != "Retry-After" {
			t.Fatalf("POST from the origin: %d %v", resp.StatusCode, resp.Header)
		}
		if resp := preflight(e, "https://evil.example.com"); resp.Header.Get("Access-Control-Allow-Origin") != "" {
			t.Fatalf("another origin allowed: %v", resp.Header)
		}
	})
	t.Run("bad origin refused", func(t *testing.T) {
		cfg := defaults()
		cfg.CORS.Origins = []string{"player.example.com"}
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "--cors-origins") {
			t.Fatalf("Validate = %v, want an error naming --cors-origins", err)
		}
	})
}

// TestMaxConnsFitsTheFileLimit: MaxConns is lowered to what the open-file
// limit leaves the server, and a limit that leaves almost nothing is refused.
func TestMaxConnsFitsTheFileLimit(t *testing.T) {
	e := newEdge(t, func(c *edge.Config) {
		c.MaxConns = 50_000
		c.Files = edge.FileBudget{Limit: 1024, Reserved: 224, Servers: 2}
	})
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "keepwatch_http_max_connections" && mf.GetMetric()[0].GetGauge().GetValue() != 400 {
			t.Fatalf("max connections %v, want (1024-224)/2 = 400", mf.GetMetric()[0].GetGauge().GetValue())
		}
	}
	cfg := defaults()
	cfg.Files = edge.FileBudget{Limit: 128, Reserved: 120, Servers: 1}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "open-file limit") {
		t.Fatalf("Validate = %v, want an error about the open-file limit", err)
	}
}
