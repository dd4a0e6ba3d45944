package command_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/keepwatch/keepwatch"
	"github.com/keepwatch/keepwatch/command"
	"github.com/keepwatch/keepwatch/internal/auth"
	"github.com/keepwatch/keepwatch/internal/edge"
	"github.com/keepwatch/keepwatch/internal/testenv"
	"github.com/keepwatch/keepwatch/storage/redisbuf"
)

// The secrets the test service accepts: tokens are signed with the first;
// the second is the one being rotated out and must still verify.
const (
	secretNew = "test-secret-new"
	secretOld = "test-secret-old"
)

// start is the injected server clock's initial time: the real time, since
// tokens are minted on the real clock and an iat in the service's future is
// refused. Tests move the clock forward by minutes at most, well within the
// hour their tokens live.
var start = time.Now().Truncate(time.Second)

// clock is the service's injected clock; tests move it by hand.
type clock struct{ ms atomic.Int64 }

func (c *clock) now() time.Time      { return time.UnixMilli(c.ms.Load()) }
func (c *clock) set(t time.Time)     { c.ms.Store(t.UnixMilli()) }
func (c *clock) add(d time.Duration) { c.ms.Add(d.Milliseconds()) }
func (c *clock) millis() int64       { return c.ms.Load() }
func newClock(t time.Time) *clock    { c := &clock{}; c.set(t); return c }

// env is one command service on a real redis-server.
type env struct {
	t     testing.TB
	redis *testenv.Redis
	buf   *redisbuf.Buffer
	shell *edge.Shell
	svc   *command.Service
	reg   *prometheus.Registry
	clock *clock
	users atomic.Int64
	base  string // when set, requests go over TCP to this URL instead of app.Test
}

// listen serves the app on a local port and sends every later request over
// TCP. app.Test cannot show a 413: Fiber's test connection reports the body
// limit as an error of the call instead of returning the answer it wrote.
func (e *env) listen() {
	e.t.Helper()
	e.base = "http://" + testenv.ServeLocal(e.t, e.shell)
}

// setup configures an env before it is built.
type setup struct {
	cfg    command.Config
	edge   edge.Config
	opts   redisbuf.Options
	client redis.Options // Addr is filled in
	auth   auth.Options
}

// newEnv starts a redis-server and a command service on it. The rate limit is
// off unless a test turns it on: most tests post many events for one user at a
// frozen clock.
func newEnv(t testing.TB, mods ...func(*setup)) *env {
	t.Helper()
	s := setup{cfg: command.DefaultConfig(), edge: command.DefaultEdge(), opts: redisbuf.Options{Shards: 4},
		auth: auth.Options{Secrets: []string{secretNew, secretOld}, CacheSize: 1024, Leeway: auth.DefaultLeeway}}
	s.edge.Rate.Limit = 0
	for _, m := range mods {
		m(&s)
	}
	r := testenv.StartRedis(t)
	s.client.Addr = r.Addr
	rc := redis.NewClient(&s.client)
	t.Cleanup(func() { _ = rc.Close() })
	buf, err := redisbuf.New(rc, s.opts)
	if err != nil {
		t.Fatal(err)
	}
	v, err := auth.New(s.auth)
	if err != nil {
		t.Fatal(err)
	}
	// As cmd/keepwatch does: the service label comes from the registerer.
	reg := prometheus.NewRegistry()
	sreg := prometheus.WrapRegistererWith(prometheus.Labels{"service": "command"}, reg)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	shell, err := edge.New(s.edge, edge.Deps{Verifier: v, Ready: buf.Ping, Registerer: sreg, Gatherer: reg, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := command.New(s.cfg, shell, buf, sreg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = shell.Shutdown(ctx)
		svc.Close()
	})
	e := &env{t: t, redis: r, buf: buf, shell: shell, svc: svc, reg: reg, clock: newClock(start)}
	shell.SetClock(e.clock.now)
	return e
}

// user returns a user id no other request of this env has used, so each case
// reads back only what it stored itself.
func (e *env) user(prefix string) string {
	return prefix + "-" + itoa(e.users.Add(1))
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// token mints a valid token for user with the current signing secret.
func token(t testing.TB, user string) string {
	t.Helper()
	tok, err := auth.Mint(secretNew, user, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// req is one HTTP request to the service.
type req struct {
	method, path string
	body         string
	ctype        string // "-" sends none; "" sends application/json
	auth         string // the whole Authorization header; "" sends none
}

// resp is an answer, with the body read.
type resp struct {
	status int
	header http.Header
	body   []byte
}

func (e *env) do(r req) resp {
	e.t.Helper()
	res, err := e.try(r)
	if err != nil {
		e.t.Fatal(err)
	}
	return res
}

// try is do for goroutines other than the test's: it returns the error.
func (e *env) try(r req) (resp, error) {
	if r.method == "" {
		r.method = http.MethodPost
	}
	var body io.Reader
	if r.body != "" {
		body = strings.NewReader(r.body)
	}
	hr := httptest.NewRequest(r.method, r.path, body)
	switch r.ctype {
	case "-":
	case "":
		if r.method != http.MethodGet && r.method != http.MethodDelete {
			hr.Header.Set("Content-Type", "application/json")
		}
	default:
		hr.Header.Set("Content-Type", r.ctype)
	}
	if r.auth != "" {
		hr.Header.Set("Authorization", r.auth)
	}
	var res *http.Response
	var err error
	if e.base != "" {
		hr.RequestURI = ""
		if hr.URL, err = url.Parse(e.base + r.path); err != nil {
			return resp{}, err
		}
		hr.Host = hr.URL.Host
		res, err = http.DefaultClient.Do(hr)
	} else {
		res, err = e.shell.App().Test(hr, -1)
	}
	if err != nil {
		return resp{}, fmt.Errorf("%s %s: %w", r.method, r.path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return resp{}, fmt.Errorf("%s %s: read body: %w", r.method, r.path, err)
	}
	return resp{status: res.StatusCode, header: res.Header, body: b}, nil
}

// post sends body to path as user.
func (e *env) post(user, path, body string) resp {
	e.t.Helper()
	return e.do(req{path: path, body: body, auth: "Bearer " + token(e.t, user)})
}

// pending reads the user's pending entries back from Redis by video.
func (e *env) pending(user string) map[string]keepwatch.State {
	e.t.Helper()
	ps, err := e.buf.Pending(context.Background(), user)
	if err != nil {
		e.t.Fatal(err)
	}
	m := make(map[string]keepwatch.State, len(ps))
	for _, p := range ps {
		m[p.VideoID] = p.State
	}
	return m
}

// total is the number of pending entries of every user.
func (e *env) total() int64 {
	e.t.Helper()
	st, err := e.buf.Stats(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return st.Pending
}

// problemBody is the RFC 9457 body keepwatch answers errors with.
type problemBody struct {
	Type   string                 `json:"type"`
	Title  string                 `json:"title"`
	Status int                    `json:"status"`
	Detail string                 `json:"detail"`
	Errors []keepwatch.FieldError `json:"errors"`
}

// problem checks that r is problem details with status and returns them.
func (r resp) problem(t testing.TB, status int) problemBody {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d; body %s", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("content type %q, want application/problem+json; body %s", ct, r.body)
	}
	var p problemBody
	if err := json.Unmarshal(r.body, &p); err != nil {
		t.Fatalf("problem body %s: %v", r.body, err)
	}
	if p.Status != status || !strings.HasPrefix(p.Type, "urn:keepwatch:problem:") || p.Title == "" {
		t.Fatalf("problem body %s does not match status %d", r.body, status)
	}
	return p
}

// fields lists the field names of a problem, in order.
func (p problemBody) fields() []string {
	out := make([]string, len(p.Errors))
	for i, f := range p.Errors {
		out[i] = f.Field
	}
	return out
}

// accepted checks a 202 and returns the accepted count.
func (r resp) accepted(t testing.TB) int {
	t.Helper()
	if r.status != http.StatusAccepted {
		t.Fatalf("status %d, want 202; body %s", r.status, r.body)
	}
	var b struct {
		Accepted int `json:"accepted"`
	}
	if err := json.Unmarshal(r.body, &b); err != nil {
		t.Fatalf("202 body %s: %v", r.body, err)
	}
	return b.Accepted
}

// authHeader is the Authorization header of a fresh token for user, for
// goroutines that must not call t.Fatal.
func authHeader(user string) (string, error) {
	tok, err := auth.Mint(secretNew, user, time.Hour)
	return "Bearer " + tok, err
}
