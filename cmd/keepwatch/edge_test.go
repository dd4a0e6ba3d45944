package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	neturl "net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keepwatch/keepwatch/internal/auth"
	"github.com/keepwatch/keepwatch/internal/testenv"
)

// underFileLimit runs the binary with args under `ulimit -n limit`: a hard
// limit too, so the process cannot raise it.
func underFileLimit(bin string, limit int, args ...string) *exec.Cmd {
	script := fmt.Sprintf(`ulimit -n %d && exec "$0" "$@"`, limit)
	return exec.Command("sh", append([]string{"-c", script, bin}, args...)...)
}

// flood opens n connections to addr from the local address ip and sends
// nothing on them, as a client that holds sockets open does. The server may
// refuse some (an answer, then close); flood reports what each one got.
type flooded struct {
	conns    []net.Conn
	statuses map[string]int // "429", "503", "held" (open and silent)
}

func flood(t *testing.T, addr, ip string, n int) *flooded {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 10 * time.Second}
	f := &flooded{statuses: map[string]int{}}
	t.Cleanup(f.close)
	for range n {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("dial %s from %s after %d connections: %v", addr, ip, len(f.conns), err)
		}
		f.conns = append(f.conns, c)
	}
	// What each connection got: a refusal comes at once; a held one says
	// nothing until its idle timeout, far beyond the 2 s read here.
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, c := range f.conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			got := "held"
			if err == nil || line != "" {
				if f := strings.Fields(line); len(f) > 1 {
					got = f[1]
				} else {
					got = "closed"
				}
			} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
				got = "closed"
			}
			mu.Lock()
			f.statuses[got]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	return f
}

func (f *flooded) close() {
	for _, c := range f.conns {
		_ = c.Close()
	}
	f.conns = nil
}

// answers sends GET url on a new connection from 127.0.0.1 and returns the
// status, failing if no HTTP answer comes. It reads with a plain socket:
// past --max-conns fasthttp answers 503 as it accepts, before the request
// is read, and Go's http.Client reports that as an unsolicited response on
// an idle connection instead of returning the status.
func answers(t *testing.T, url string) int {
	t.Helper()
	u, err := neturl.Parse(url)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialTimeout("tcp", u.Host, 10*time.Second)
	if err != nil {
		t.Fatalf("GET %s: no connection: %v", url, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	// A write can fail once the 503 is in and the server has closed: the
	// answer is still there to read.
	_, werr := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", u.RequestURI(), u.Host)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("GET %s: no answer: %v (write: %v)", url, err, werr)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode
}

// TestIdleFloodUnderLowFileLimit guards the process against running out of
// file descriptors: `keepwatch command` under `ulimit -n 256` used to exit
// ("accept4: too many open files") when 600 idle connections came. Now
// --max-conns is lowered to what the limit leaves (and says so), one address
// gets --max-conns-per-ip, and the process keeps answering through a flood
// from one address and then from many, and serves normally after.
func TestIdleFloodUnderLowFileLimit(t *testing.T) {
	bin := buildBinary(t, "run it under a low open-file limit")
	r := testenv.StartRedis(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	base := "http://" + addr
	p := testenv.StartProc(t, underFileLimit(bin, 256, "command", "--flush=false", "--http-addr", addr,
		"--redis-url", r.URL(), "--auth-secret", "s", "--max-conns-per-ip", "50", "--idle-timeout", "1m"))
	p.WaitHTTP(base+"/readyz", http.StatusOK, time.Minute)
	lowered := regexp.MustCompile(`--max-conns lowered.*"max_conns":50000,"lowered_to":(\d+),"open_file_limit":256`).FindStringSubmatch(p.Logs.String())
	if lowered == nil {
		t.Fatalf("no log line naming --max-conns 50000 and the open-file limit 256:\n%s", p.Logs)
	}
	t.Logf("--max-conns 50000 lowered to %s under ulimit -n 256", lowered[1])

	// One address: past --max-conns-per-ip its connections get 429, and
	// everyone else is served.
	one := flood(t, addr, "127.0.0.2", 600)
	if one.statuses["held"] > 50 || one.statuses["429"] == 0 {
		t.Fatalf("600 connections from one address: %v, want at most 50 held and the rest refused with 429", one.statuses)
	}
	running(t, p)
	if code := answers(t, base+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz during the flood from one address: %d", code)
	}
	one.close()

	// Many addresses: past the lowered --max-conns new connections get 503,
	// and the process stays up.
	var many []*flooded
	for i := range 20 {
		many = append(many, flood(t, addr, fmt.Sprintf("127.0.1.%d", i+1), 30))
	}
	held, refused := 0, 0
	for _, f := range many {
		held += f.statuses["held"]
		refused += f.statuses["503"]
	}
	running(t, p)
	answers(t, base+"/healthz") // an answer, 503 while every slot is held
	var max int
	fmt.Sscan(lowered[1], &max)
	if held == 0 || held > max || refused == 0 {
		t.Fatalf("600 connections from 20 addresses: %d held, %d refused with 503; want at most the lowered --max-conns (%d) held and the rest refused", held, refused, max)
	}
	for _, f := range many {
		f.close()
	}

	// After the flood: normal service.
	p.WaitHTTP(base+"/healthz", http.StatusOK, time.Minute)
	tok, err := auth.Mint("s", "after-flood", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if code := postProgress(t, base, tok, `{"video_id":"v1","percent":5}`); code != http.StatusAccepted {
		t.Fatalf("POST after the flood: %d\n%s", code, p.Logs)
	}
	running(t, p)
}

// TestSecretsFromFiles: --auth-secret-file and --admin-token-file keep the
// secrets out of the process's arguments (a trailing newline, as editors and
// Kubernetes secrets leave, is ignored); a secret given both ways is a usage
// error; and /debug/pprof/cmdline, which would show the arguments, is not
// served even to the admin.
func TestSecretsFromFiles(t *testing.T) {
	dir := t.TempDir()
	secretFile, adminFile := filepath.Join(dir, "auth-secret"), filepath.Join(dir, "admin-token")
	if err := os.WriteFile(secretFile, []byte("old,s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(adminFile, []byte("adm1n\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := testenv.StartRedis(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	base := "http://" + addr
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done, out := startMain(t, ctx, "command", "--flush=false", "--http-addr", addr, "--redis-url", r.URL(),
		"--auth-secret-file", secretFile, "--admin-token-file", adminFile)
	waitStatus(t, base+"/readyz", http.StatusOK)
	tok, err := auth.Mint("s3cret", "alice", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if code := postProgress(t, base, tok, `{"video_id":"v","percent":1}`); code != http.StatusAccepted {
		t.Fatalf("POST with a token of the file's second secret: %d\n%s", code, out)
	}
	for path, want := range map[string]int{"/debug/pprof/heap?debug=1": 200, "/debug/pprof/cmdline": 404} {
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
		req.Header.Set("Authorization", "Bearer adm1n")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("%s with the file's admin token: %d, want %d", path, resp.StatusCode, want)
		}
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit code %d\n%s", code, out)
	}

	for name, args := range map[string][]string{
		"auth secret both ways": {"command", "--auth-secret", "s", "--auth-secret-file", secretFile},
		"admin token both ways": {"query", "--auth-secret", "s", "--admin-token", "a", "--admin-token-file", adminFile},
		"token both ways":       {"token", "--user", "u", "--auth-secret", "s", "--auth-secret-file", secretFile},
	} {
		t.Run(name, func(t *testing.T) {
			done, out := startMain(t, context.Background(), args...)
			if code := <-done; code != 2 || !strings.Contains(out.String(), "both set") {
				t.Fatalf("exit code %d, want 2 (usage error) saying both are set\n%s", code, out)
			}
		})
	}
	t.Run("token reads the file", func(t *testing.T) {
		code, stdout, stderr := runMain(t, context.Background(), map[string]string{"KEEPWATCH_AUTH_SECRET_FILE": secretFile}, "token", "--user", "bob")
		if code != 0 {
			t.Fatalf("exit code %d\n%s", code, stderr)
		}
		v, err := auth.NewVerifier([]string{"old"}, 0)
		if err != nil {
			t.Fatal(err)
		}
		if user, err := v.Verify([]byte(strings.TrimSpace(stdout))); err != nil || user != "bob" {
			t.Fatalf("the token is not signed with the file's first secret: %q %v", user, err)
		}
	})
}

// TestVersion: `keepwatch version` and `keepwatch --version` print the
// version and revision stamped with -ldflags -X (as deploy/Dockerfile does),
// and the Go version; without a stamp, the revision Go recorded from the git
// checkout.
func TestVersion(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: builds the keepwatch binary twice with go build (slow on a cold cache); CI runs it")
	}
	dir := t.TempDir()
	stamped, plain := filepath.Join(dir, "stamped"), filepath.Join(dir, "plain")
	for bin, args := range map[string][]string{
		stamped: {"-ldflags", "-X main.version=9.8.7 -X main.revision=0123abc"},
		plain:   {"-buildvcs=true"},
	} {
		if out, err := exec.Command("go", append(append([]string{"build", "-o", bin}, args...), ".")...).CombinedOutput(); err != nil {
			t.Fatalf("go build %v: %v\n%s", args, err, out)
		}
	}
	want := fmt.Sprintf("keepwatch version 9.8.7, revision 0123abc, %s\n", runtime.Version())
	for _, arg := range []string{"version", "--version"} {
		out, err := exec.Command(stamped, arg).Output()
		if err != nil || string(out) != want {
			t.Errorf("keepwatch %s = %q, %v; want %q", arg, out, err, want)
		}
	}
	// What Go recorded of the checkout: nothing in a git worktree (its .git
	// is a file, which go build does not follow), the commit in a clone.
	meta, err := exec.Command("go", "version", "-m", plain).Output()
	if err != nil {
		t.Fatalf("go version -m: %v", err)
	}
	rev := "unknown"
	if m := regexp.MustCompile(`vcs\.revision=(\w+)`).FindSubmatch(meta); m != nil {
		rev = string(m[1])
		if strings.Contains(string(meta), "vcs.modified=true") {
			rev += "-modified"
		}
	}
	out, err := exec.Command(plain, "version").Output()
	if err != nil || !strings.Contains(string(out), "revision "+rev+",") {
		t.Errorf("keepwatch version without a stamp = %q, %v; want the revision Go recorded: %s", out, err, rev)
	}
	t.Logf("without a stamp: %s", out)
}

// TestBuildInfoMetric: the one registry main builds carries the Go and
// process collectors and keepwatch_build_info, once, beside the service's
// own series.
func TestBuildInfoMetric(t *testing.T) {
	r := testenv.StartRedis(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done, out := startMain(t, ctx, "command", "--flush=false", "--http-addr", addr, "--redis-url", r.URL(), "--auth-secret", "s")
	waitStatus(t, "http://"+addr+"/readyz", http.StatusOK)
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	info := regexp.MustCompile(`(?m)^keepwatch_build_info\{goversion="` + regexp.QuoteMeta(runtime.Version()) + `",revision="[^"]+",version="[^"]+"\} 1$`)
	for _, re := range []*regexp.Regexp{info, regexp.MustCompile(`(?m)^go_goroutines \d+$`), regexp.MustCompile(`(?m)^process_open_fds \d+$`),
		regexp.MustCompile(`(?m)^keepwatch_ready\{service="command"\} 1$`)} {
		if n := len(re.FindAll(body, -1)); n != 1 {
			t.Errorf("/metrics has %d lines matching %s, want 1", n, re)
		}
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit code %d\n%s", code, out)
	}
}
