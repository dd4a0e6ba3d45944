//go:build !nodev

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keepwatch/keepwatch/internal/testenv"
)

// devRun is one `keepwatch dev` run through Main, stopped like Ctrl-C.
type devRun struct {
	t           *testing.T
	out         *testenv.Output
	cancel      context.CancelFunc
	code        chan int
	cmdURL      string
	queryURL    string
	redisPID    int
	printedTok  string
	interrupted bool
}

var (
	devTokenRE = regexp.MustCompile(`eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+`)
	devPIDRE   = regexp.MustCompile(`redis-server \(pid (\d+)\)`)
)

func startDev(t *testing.T, dataDir string, extra ...string) *devRun {
	t.Helper()
	cmdAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	queryAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	ctx, cancel := context.WithCancel(context.Background())
	r := &devRun{t: t, out: &testenv.Output{}, cancel: cancel, code: make(chan int, 1),
		cmdURL: "http://" + cmdAddr, queryURL: "http://" + queryAddr}
	env := &environment{stdout: r.out, stderr: r.out, getenv: func(string) string { return "" },
		logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	demoAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	args := append([]string{"dev", "--data-dir", dataDir, "--command-addr", cmdAddr, "--query-addr", queryAddr, "--demo-addr", demoAddr}, extra...)
	go func() { r.code <- Main(ctx, env, args) }()
	t.Cleanup(func() { r.stop() })
	for _, u := range []string{r.cmdURL, r.queryURL} {
		r.waitReady(u + "/readyz")
	}
	r.printedTok = devTokenRE.FindString(r.out.String())
	if r.printedTok == "" {
		t.Fatalf("no token printed:\n%s", r.out)
	}
	if m := devPIDRE.FindStringSubmatch(r.out.String()); m != nil {
		fmt.Sscan(m[1], &r.redisPID)
	}
	return r
}

// waitReady polls url until it answers 200; it gives up only if Main exits.
func (r *devRun) waitReady(url string) {
	r.t.Helper()
	for {
		resp, err := http.Get(url)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		select {
		case code := <-r.code:
			r.code <- code
			r.t.Fatalf("keepwatch dev exited with %d before %s was ready:\n%s", code, url, r.out)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stop cancels Main's context, as SIGINT does, and returns its exit code.
func (r *devRun) stop() int {
	if !r.interrupted {
		r.interrupted = true
		r.cancel()
	}
	code := <-r.code
	r.code <- code
	return code
}

func (r *devRun) do(method, url, token, body string) (int, string) {
	r.t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		r.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (r *devRun) post(token, video string, percent float64) {
	r.t.Helper()
	code, body := r.do("POST", r.cmdURL+"/v1/progress", token, fmt.Sprintf(`{"video_id":%q,"percent":%v,"position":100,"duration":1000}`, video, percent))
	if code != 202 || body != `{"accepted":1}` {
		r.t.Fatalf("POST %s: %d %s", video, code, body)
	}
}

func (r *devRun) keepWatching(token string) string {
	r.t.Helper()
	code, body := r.do("GET", r.queryURL+"/v1/keep-watching", token, "")
	if code != 200 {
		r.t.Fatalf("GET keep-watching: %d %s", code, body)
	}
	return body
}

// waitFlushed polls the command API's metrics until the flusher has written
// n documents to MongoDB.
func (r *devRun) waitFlushed(n int) {
	r.t.Helper()
	testenv.Eventually(r.t, time.Minute, "the flusher to write to MongoDB", func() bool {
		v, _ := testenv.MetricValue(testenv.Scrape(r.t, r.cmdURL+"/metrics"), "keepwatch_flush_written_total")
		return v >= float64(n)
	})
}

// TestDevRunsEverythingAndKeepsDataAcrossRestarts follows the README: start
// keepwatch dev, run its curl lines, Ctrl-C, start again. Progress flushed to
// the embedded MongoDB and progress still pending in Redis' append-only file
// both survive, and so does the dev auth secret (an old token still works).
func TestDevRunsEverythingAndKeepsDataAcrossRestarts(t *testing.T) {
	dir := t.TempDir()

	// Run 1: a short flush interval, so the event reaches MongoDB.
	r1 := startDev(t, dir, "--flush-interval", "200ms")
	tok := r1.printedTok
	for _, line := range []string{"curl -i -X POST " + r1.cmdURL + "/v1/progress", "curl -s " + r1.queryURL + "/v1/keep-watching"} {
		if !strings.Contains(r1.out.String(), line) {
			t.Errorf("the banner lacks %q:\n%s", line, r1.out)
		}
	}
	r1.post(tok, "flushed-video", 40)
	if kw := r1.keepWatching(tok); !strings.Contains(kw, `"video_id":"flushed-video"`) {
		t.Fatalf("keep-watching right after the POST: %s", kw)
	}
	r1.waitFlushed(1)
	if code := r1.stop(); code != 0 {
		t.Fatalf("run 1 exited %d:\n%s", code, r1.out)
	}
	if r1.redisPID != 0 {
		if err := syscall.Kill(r1.redisPID, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("redis-server (pid %d) still runs after keepwatch dev stopped: %v", r1.redisPID, err)
		}
	}

	// Run 2: a flush interval far beyond the test, so the new event stays
	// pending in Redis when this run stops.
	r2 := startDev(t, dir, "--flush-interval", "1h")
	if kw := r2.keepWatching(tok); !strings.Contains(kw, `"video_id":"flushed-video"`) {
		t.Fatalf("after a restart, keep-watching lost the flushed video: %s", kw)
	}
	r2.post(tok, "pending-video", 60)
	if code := r2.stop(); code != 0 {
		t.Fatalf("run 2 exited %d:\n%s", code, r2.out)
	}

	// Run 3: both are still there.
	r3 := startDev(t, dir, "--flush-interval", "1h")
	kw := r3.keepWatching(tok)
	for _, v := range []string{"flushed-video", "pending-video"} {
		if !strings.Contains(kw, `"video_id":"`+v+`"`) {
			t.Errorf("after a restart, keep-watching lacks %s: %s", v, kw)
		}
	}
	if code := r3.stop(); code != 0 {
		t.Fatalf("run 3 exited %d:\n%s", code, r3.out)
	}
}

// TestDevWithoutRedisServerUsesEmbeddedRedis: with no redis-server on PATH,
// dev says so, still works, and a clean restart keeps pending events.
func TestDevWithoutRedisServerUsesEmbeddedRedis(t *testing.T) {
	t.Setenv("PATH", t.TempDir()) // an empty directory: no redis-server
	dir := t.TempDir()
	r1 := startDev(t, dir, "--flush-interval", "1h")
	if !strings.Contains(r1.out.String(), "NOTICE: redis-server is not on PATH") || !strings.Contains(r1.out.String(), "in memory") {
		t.Fatalf("no notice about the embedded Redis:\n%s", r1.out)
	}
	r1.post(r1.printedTok, "v1", 30)
	if kw := r1.keepWatching(r1.printedTok); !strings.Contains(kw, `"video_id":"v1"`) {
		t.Fatalf("keep-watching: %s", kw)
	}
	if code := r1.stop(); code != 0 {
		t.Fatalf("exited %d:\n%s", code, r1.out)
	}
	r2 := startDev(t, dir, "--flush-interval", "1h")
	if kw := r2.keepWatching(r1.printedTok); !strings.Contains(kw, `"video_id":"v1"`) {
		t.Fatalf("after a clean restart, keep-watching lost the pending event: %s", kw)
	}
}

// TestDevOneRegistryServiceLabels: keepwatch dev runs command and query on
// the one registry main builds; series of one name tell the services apart
// by their service label, and the process's own series appear once.
func TestDevOneRegistryServiceLabels(t *testing.T) {
	r := startDev(t, t.TempDir())
	for _, u := range []string{r.cmdURL, r.queryURL} {
		r.do("GET", u+"/healthz", r.printedTok, "")
		r.do("GET", u+"/no-such-path", r.printedTok, "")
	}
	for _, u := range []string{r.cmdURL, r.queryURL} {
		_, body := r.do("GET", u+"/metrics", "", "")
		for _, want := range []string{
			`keepwatch_http_request_duration_seconds_count{code="200",route="/healthz",service="command"} 1`,
			`keepwatch_http_request_duration_seconds_count{code="200",route="/healthz",service="query"} 1`,
			`keepwatch_http_request_duration_seconds_count{code="404",route="other",service="command"} 1`,
			`keepwatch_http_request_duration_seconds_count{code="404",route="other",service="query"} 1`,
			`keepwatch_ready{service="command"} 1`,
			`keepwatch_ready{service="query"} 1`,
			`keepwatch_token_cache_entries{service="query"}`,
		} {
			if !strings.Contains(body, want+"\n") && !strings.Contains(body, want+" ") {
				t.Errorf("%s/metrics lacks %s", u, want)
			}
		}
		for _, once := range []string{"\ngo_goroutines ", "\nkeepwatch_build_info{"} {
			if n := strings.Count(body, once); n != 1 {
				t.Errorf("%s/metrics has %q %d times, want once", u, strings.TrimSpace(once), n)
			}
		}
	}
}
