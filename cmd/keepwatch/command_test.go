package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keepwatch/keepwatch"
	"github.com/keepwatch/keepwatch/internal/auth"
	"github.com/keepwatch/keepwatch/internal/testenv"
	"github.com/keepwatch/keepwatch/storage/redisbuf"
)

// startMain runs Main in the background; the returned channel yields its exit code.
func startMain(t *testing.T, ctx context.Context, args ...string) (<-chan int, *testenv.Output) {
	t.Helper()
	out := &testenv.Output{}
	env := &environment{stdout: out, stderr: out, getenv: func(string) string { return "" },
		logger: slog.New(slog.NewTextHandler(out, nil))}
	done := make(chan int, 1)
	go func() { done <- Main(ctx, env, args) }()
	return done, out
}

// refusesToStart waits for a service started by startMain to exit 1 with a
// message containing naming, failing with what the start was (situation)
// otherwise.
func refusesToStart(t *testing.T, done <-chan int, out *testenv.Output, naming, situation string) {
	t.Helper()
	select {
	case code := <-done:
		if code != 1 || !strings.Contains(out.String(), naming) {
			t.Errorf("%s: exit code %d, want 1 naming %q\n%s", situation, code, naming, out)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: still running, want an exit 1 naming %q\n%s", situation, naming, out)
	}
}

// waitStatus waits until url answers want; the bound only stops a hung test.
func waitStatus(t *testing.T, url string, want int) {
	t.Helper()
	testenv.WaitHTTP(t, url, want, 30*time.Second)
}

func postProgress(t *testing.T, base, token, body string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/progress", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST: %v", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// TestCommandServesThenDrains runs `keepwatch command` through Main: it
// becomes ready, stores a POST (counted in /metrics), and on cancellation
// (SIGTERM) turns /readyz to 503 before it stops listening, then exits 0.
func TestCommandServesThenDrains(t *testing.T) {
	r := testenv.StartRedis(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	base := "http://" + addr
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done, out := startMain(t, ctx, "command", "--flush=false", "--http-addr", addr, "--redis-url", r.URL(),
		"--auth-secret", "s1,s2", "--drain-delay", "300ms")
	waitStatus(t, base+"/readyz", http.StatusOK)

	tok, err := auth.Mint("s2", "alice", time.Hour) // the second secret: rotation
	if err != nil {
		t.Fatal(err)
	}
	// Two posts with one token: one verification, the second from the cache.
	for _, pct := range []string{"42.5", "43"} {
		if code := postProgress(t, base, tok, `{"video_id":"v1","percent":`+pct+`}`); code != http.StatusAccepted {
			t.Fatalf("POST = %d, want 202\n%s", code, out)
		}
	}
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`keepwatch_events_accepted_total{service="command"} 2` + "\n",
		`keepwatch_token_verifications_total{service="command"} 1` + "\n",
		`keepwatch_token_cache_entries{service="command"} 1` + "\n",
	} {
		if !strings.Contains(string(metrics), want) {
			t.Fatalf("/metrics lacks %q:\n%s", want, metrics)
		}
	}

	cancel()
	waitStatus(t, base+"/readyz", http.StatusServiceUnavailable)
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit code %d, want 0\n%s", code, out)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("Main did not return after cancellation\n%s", out)
	}
}

func TestCommandRefusesBadConfig(t *testing.T) {
	for name, args := range map[string][]string{
		"no secret":     {"command", "--flush=false"},
		"unknown flag":  {"command", "--no-such-flag"},
		"bad duration":  {"command", "--commit-window", "soon"},
		"zero workers":  {"command", "--flush=false", "--auth-secret", "s", "--commit-workers", "0"},
		"token no user": {"token", "--auth-secret", "s"},
		"leeway":        {"command", "--flush=false", "--auth-secret", "s", "--auth-leeway", "-1s"},
		"json depth":    {"command", "--flush=false", "--auth-secret", "s", "--max-json-depth", "1"},
		"query leeway":  {"query", "--auth-secret", "s", "--auth-max-ttl", "-1h"},
	} {
		t.Run(name, func(t *testing.T) {
			done, out := startMain(t, context.Background(), args...)
			if code := <-done; code != 2 {
				t.Fatalf("exit code %d, want 2 (usage error)\n%s", code, out)
			}
		})
	}
}

// TestCommandRefusesAnotherShardCount: entries buffered with one
// --redis-shards would be stranded under another, so command and flush refuse
// to start, and say which count the data has; nothing pending is touched.
func TestCommandRefusesAnotherShardCount(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	buf, err := redisbuf.New(r.Client(), redisbuf.Options{Shards: 4})
	if err != nil {
		t.Fatal(err)
	}
	if err := buf.CheckShards(ctx); err != nil {
		t.Fatal(err)
	}
	per, err := buf.Apply(ctx, []redisbuf.Write{{UserID: "u1", Entries: []redisbuf.Entry{{VideoID: "v", State: keepwatch.State{EventTime: 1, Percent: 5}}}}})
	if err != nil || per[0] != nil {
		t.Fatalf("apply: %v %v", per, err)
	}
	for _, args := range [][]string{
		{"command", "--flush=false", "--auth-secret", "s", "--http-addr", "127.0.0.1:0"},
		{"flush", "--http-addr", "127.0.0.1:0"},
	} {
		args = append(args, "--redis-url", r.URL(), "--redis-shards", "8")
		done, out := startMain(t, ctx, args...)
		refusesToStart(t, done, out, "--redis-shards 4", args[0]+" with 8 shards over data written with 4")
	}
	if ps, err := buf.Pending(ctx, "u1"); err != nil || len(ps) != 1 {
		t.Fatalf("pending after the refusals = %+v, %v", ps, err)
	}
}

// TestWritersRefuseARedisThatCollates: a redis-server running under a locale
// other than C compares strings in scripts by that locale, which would break
// ties between states unlike MongoDB; the services that write the buffer
// refuse it at start and name the fix.
func TestWritersRefuseARedisThatCollates(t *testing.T) {
	r := testenv.StartRedisEnv(t, testenv.Locale(t, "en_US"))
	for _, args := range [][]string{
		{"command", "--flush=false", "--auth-secret", "s", "--http-addr", "127.0.0.1:0"},
		{"flush", "--http-addr", "127.0.0.1:0"},
	} {
		done, out := startMain(t, context.Background(), append(args, "--redis-url", r.URL())...)
		refusesToStart(t, done, out, "LC_ALL=C", args[0]+" on a Redis under en_US.UTF-8")
	}
}

// TestSIGTERMFinishesInFlightRequests builds the real binary, holds a request
// in flight by pausing Redis writes, sends SIGTERM, and checks that the
// request is still answered 202 (its write acknowledged) and that the process
// exits 0.
func TestSIGTERMFinishesInFlightRequests(t *testing.T) {
	bin := buildBinary(t, "send it a real SIGTERM")
	r := testenv.StartRedis(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	base := "http://" + addr
	cmd := exec.Command(bin, "command", "--flush=false", "--http-addr", addr, "--redis-url", r.URL(), "--auth-secret", "s")
	var logs testenv.Output
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.Env = append(os.Environ(), "KEEPWATCH_REDIS_TIMEOUT=10s")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill() }()
	waitStatus(t, base+"/readyz", http.StatusOK)
	tok, _ := auth.Mint("s", "bob", time.Hour)

	// Pause Redis writes so the next POST waits in the group commit.
	rc := r.Client()
	if err := rc.Do(context.Background(), "CLIENT", "PAUSE", "1500", "WRITE").Err(); err != nil {
		t.Fatal(err)
	}
	result := make(chan int, 1)
	go func() { result <- postProgress(t, base, tok, `{"video_id":"v9","percent":7}`) }()
	// Wait until the request's write is held by the pause: then it is in
	// flight inside the server.
	testenv.Eventually(t, 10*time.Second, "the POST to reach the paused Redis", func() bool {
		info, err := rc.Info(context.Background(), "clients").Result()
		return err == nil && !strings.Contains(info, "blocked_clients:0")
	})
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := <-result; code != http.StatusAccepted {
		t.Fatalf("in-flight POST = %d, want 202\n%s", code, logs.String())
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, logs.String())
	}
	// Read it back the way the query side does, with the default shard count.
	buf, err := redisbuf.New(rc, redisbuf.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pending, err := buf.Pending(context.Background(), "bob")
	if err != nil || len(pending) != 1 || pending[0].VideoID != "v9" {
		t.Fatalf("the in-flight write is not in Redis: %+v %v", pending, err)
	}
}

// TestServersDropSlowAndIdleConnections: --read-timeout disconnects a client
// that never finishes its request, and --idle-timeout a keep-alive
// connection that sends nothing more, on both APIs.
func TestServersDropSlowAndIdleConnections(t *testing.T) {
	apis := startBothAPIs(t, map[string]string{"read-timeout": "300ms", "idle-timeout": "300ms"})
	for name, a := range apis {
		t.Run(name+" slow request", func(t *testing.T) {
			expectClosed(t, a, "GET /healthz HTTP/1.1\r\nHost: x\r\n", false) // no end of headers
		})
		t.Run(name+" idle keep-alive", func(t *testing.T) {
			expectClosed(t, a, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", true)
		})
	}
}

// startBothAPIs starts `keepwatch command` and `keepwatch query`, on their
// own Redis and MongoDB, both with the flags given (name → value), and
// returns their addresses by name. Both are stopped when the test ends.
func startBothAPIs(t *testing.T, flags map[string]string) map[string]string {
	t.Helper()
	r := testenv.StartRedis(t)
	m := testenv.StartMongo(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	ctx, cancel := context.WithCancel(context.Background())
	args := []string{"command", "--flush=false", "--http-addr", addr, "--redis-url", r.URL(), "--auth-secret", "s1"}
	vars := map[string]string{
		"KEEPWATCH_MONGO_URI": m.URI, "KEEPWATCH_MONGO_DB": m.Database, "KEEPWATCH_MIGRATE": "true",
		"KEEPWATCH_REDIS_URL": r.URL(), "KEEPWATCH_AUTH_SECRET": "s1",
	}
	for name, v := range flags {
		args = append(args, "--"+name, v)
		vars["KEEPWATCH_"+strings.ToUpper(strings.ReplaceAll(name, "-", "_"))] = v
	}
	done, out := startMain(t, ctx, args...)
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("command exit code %d\n%s", code, out)
		}
	})
	waitStatus(t, "http://"+addr+"/readyz", http.StatusOK)
	queryBase, _ := startQuery(t, vars)
	http.DefaultClient.CloseIdleConnections() // the readiness polls' keep-alive connections
	return map[string]string{"command": addr, "query": strings.TrimPrefix(queryBase, "http://")}
}

// expectClosed sends req on a new connection and fails unless the server
// closes the connection (after answering, when answered is set) well before
// the test's own 10 s limit.
func expectClosed(t *testing.T, addr, req string, answered bool) {
	t.Helper()
	got, closed := testenv.Exchange(t, addr, req, 10*time.Second)
	if !closed {
		t.Fatalf("connection still open after 10 s; got %q", got)
	}
	if answered != strings.HasPrefix(string(got), "HTTP/1.1 200") {
		t.Fatalf("before closing the server sent %q; answered = %v", got, answered)
	}
}

// TestServersBoundConnections: past --max-conns open connections, a new
// connection gets 503 and is closed, on both APIs, while the open ones are
// still served.
func TestServersBoundConnections(t *testing.T) {
	for name, a := range startBothAPIs(t, map[string]string{"max-conns": "2"}) {
		t.Run(name, func(t *testing.T) {
			// The server frees a closed connection's slot when its read
			// fails, which may lag the close: retry until two are served.
			var held []*bufio.ReadWriter
			deadline := time.Now().Add(10 * time.Second)
			for len(held) < 2 {
				c, err := net.Dial("tcp", a)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				rw := bufio.NewReadWriter(bufio.NewReader(c), bufio.NewWriter(c))
				if status := healthz(t, rw); status == http.StatusOK {
					held = append(held, rw)
				} else if time.Now().After(deadline) {
					t.Fatalf("connection %d: status %d", len(held)+1, status)
				}
			}
			c, err := net.Dial("tcp", a)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if status := healthz(t, bufio.NewReadWriter(bufio.NewReader(c), bufio.NewWriter(c))); status != http.StatusServiceUnavailable {
				t.Fatalf("third connection: status %d, want 503", status)
			}
			for i, rw := range held {
				if status := healthz(t, rw); status != http.StatusOK {
					t.Fatalf("held connection %d: status %d after the refusal", i+1, status)
				}
			}
		})
	}
}

// healthz sends GET /healthz on rw and returns the answer's status.
func healthz(t *testing.T, rw *bufio.ReadWriter) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://x/healthz", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := req.Write(rw); err != nil {
		t.Fatal(err)
	}
	if err := rw.Flush(); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(rw.Reader, req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// TestTokenChecksAreConfigured: --auth-issuer, --auth-audience and
// --auth-max-ttl (here from their KEEPWATCH_* variables) reach the command
// API's verifier, and `keepwatch token` run with the same variables mints a
// token that passes them.
func TestTokenChecksAreConfigured(t *testing.T) {
	r := testenv.StartRedis(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	vars := map[string]string{
		"KEEPWATCH_AUTH_SECRET": "s", "KEEPWATCH_AUTH_ISSUER": "https://id.example", "KEEPWATCH_AUTH_AUDIENCE": "keepwatch",
		"KEEPWATCH_AUTH_MAX_TTL": "2h", "KEEPWATCH_REDIS_URL": r.URL(), "KEEPWATCH_HTTP_ADDR": addr, "KEEPWATCH_FLUSH": "false",
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int, 1)
	go func() {
		code, _, errOut := runMain(t, ctx, vars, "command")
		if code != 0 {
			t.Logf("keepwatch command: exit %d\n%s", code, errOut)
		}
		done <- code
	}()
	base := "http://" + addr
	waitStatus(t, base+"/readyz", http.StatusOK)
	mint := func(args ...string) string {
		code, out, errOut := runMain(t, ctx, vars, append([]string{"token", "--user", "alice"}, args...)...)
		if code != 0 {
			t.Fatalf("keepwatch token: exit %d\n%s", code, errOut)
		}
		return strings.TrimSpace(out)
	}
	bare, err := auth.Mint("s", "alice", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, token string
		want        int
	}{
		{"minted with the same variables", mint(), http.StatusAccepted},
		{"living longer than --auth-max-ttl", mint("--ttl", "3h"), http.StatusUnauthorized},
		{"another audience", mint("--auth-audience", "other"), http.StatusUnauthorized},
		{"without iss and aud", bare, http.StatusUnauthorized},
	} {
		if code := postProgress(t, base, tc.token, `{"video_id":"v","percent":1}`); code != tc.want {
			t.Errorf("%s: POST = %d, want %d", tc.name, code, tc.want)
		}
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit code %d", code)
	}
}
