//go:build linux

package edge_test

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
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepwatch/keepwatch/internal/edge"
	"github.com/keepwatch/keepwatch/internal/testenv"
)

// fdChildEnv makes the test binary act as the server of
// TestAcceptWaitsOutFileExhaustion.
const fdChildEnv = "EDGE_TEST_FD_CHILD"

// TestAcceptWaitsOutFileExhaustion runs a shell in a child process whose
// open-file limit is a few descriptors above what it uses, so that idle
// connections exhaust it and accept fails with EMFILE, for real. fasthttp
// treats that as the end of the server; the shell's listener waits it out.
// The child keeps running, a request made meanwhile waits in the accept
// queue, and once the idle connections close it is answered.
func TestAcceptWaitsOutFileExhaustion(t *testing.T) {
	if os.Getenv(fdChildEnv) != "" {
		fdChild()
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestAcceptWaitsOutFileExhaustion$")
	cmd.Env = append(os.Environ(), fdChildEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr testenv.Output
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = stdin.Close() // the child exits when its stdin closes
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
		}
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("the child did not start: %v\n%s", err, stderr.String())
	}
	var addr string
	var limit int
	if _, err := fmt.Sscan(line, &addr, &limit); err != nil {
		t.Fatalf("child said %q: %v", line, err)
	}

	// Twice the child's limit in idle connections: accept runs out of
	// descriptors.
	var idle []net.Conn
	for range 2 * limit {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		idle = append(idle, c)
	}
	// A request now waits in the accept queue.
	answered := make(chan string, 1)
	go func() {
		client := &http.Client{Timeout: 60 * time.Second}
		resp, err := client.Get("http://" + addr + "/metrics")
		if err != nil {
			answered <- err.Error()
			return
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		answered <- string(body)
	}()
	// Accept has failed by the time the child has no descriptor left:
	// wait until its log says so (nothing else reaches it meanwhile).
	retrying := regexp.MustCompile(`accept: retrying.*too many open files`)
	testenv.Eventually(t, 30*time.Second, "accept to fail for lack of descriptors", func() bool {
		select {
		case err := <-exited:
			t.Fatalf("the child exited (%v) when out of descriptors:\n%s", err, stderr.String())
		default:
		}
		return retrying.MatchString(stderr.String())
	})
	select {
	case got := <-answered:
		t.Fatalf("answered while out of descriptors: %q", got)
	default:
	}
	for _, c := range idle {
		_ = c.Close()
	}
	select {
	case got := <-answered:
		m := regexp.MustCompile(`(?m)^keepwatch_http_accept_retries_total (\d+)$`).FindStringSubmatch(got)
		if m == nil {
			t.Fatalf("the waiting request got %q", got)
		}
		if n, _ := strconv.Atoi(m[1]); n < 1 {
			t.Fatalf("keepwatch_http_accept_retries_total = %d, want at least 1", n)
		}
	case err := <-exited:
		t.Fatalf("the child exited (%v):\n%s", err, stderr.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("the waiting request was never answered:\n%s", stderr.String())
	}
}

// fdChild serves a shell under a tight open-file limit until stdin closes.
func fdChild() {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	reg := prometheus.NewRegistry()
	shell, err := edge.New(edge.Config{ReadTimeout: time.Minute, IdleTimeout: time.Minute, MaxConns: 10_000,
		MaxHeaderBytes: 4096, BodyLimit: 1024, Grace: time.Second},
		edge.Deps{Ready: func(context.Context) error { return nil }, Registerer: reg, Gatherer: reg,
			Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		fail(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	open, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		fail(err)
	}
	limit := uint64(len(open) + 8)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: limit, Max: limit}); err != nil {
		fail(err)
	}
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	fmt.Println(ln.Addr().String(), limit)
	if err := shell.Serve(ln); err != nil {
		fail(fmt.Errorf("serve returned: %w", err))
	}
	fail(fmt.Errorf("serve returned"))
}

// TestConnectionsPastTheLimitGetTheir503: every connection past
// --max-conns is answered 503 and closed, while the one within the limit
// stays served. fasthttp writes the 503 as it accepts, before the request
// is read: Go's http.Client calls that an unsolicited response and reports
// an error instead of the status, so this reads with a plain socket.
func TestConnectionsPastTheLimitGetTheir503(t *testing.T) {
	e := newEdge(t, func(c *edge.Config) { c.MaxConns = 1 })
	addr := e.listen()
	held, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	// The held connection is served (answered once) before the others come.
	if _, err := held.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	if resp, err := http.ReadResponse(bufio.NewReader(held), nil); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("the connection within the limit: %v %v", resp, err)
	}
	lost := 0
	var last error
	for range 200 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
			lost++
			last = err
			_ = c.Close()
			continue
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		switch {
		case err != nil:
			lost++
			last = err
		case resp.StatusCode != http.StatusServiceUnavailable:
			t.Fatalf("past the limit: %d, want 503", resp.StatusCode)
		}
		_ = c.Close()
	}
	if lost > 0 {
		t.Fatalf("%d of 200 connections past the limit got no answer (last: %v)", lost, last)
	}
}
