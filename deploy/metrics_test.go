package deploy_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keepwatch/keepwatch/internal/testenv"
)

// exportedMetrics starts the real command, query and flush binaries against
// a real redis-server and the MongoDB test server, sends them a few requests
// so that labelled series exist, and reads every metric (name, type, label
// names) from their /metrics.
func exportedMetrics(t *testing.T) *metricSet {
	t.Helper()
	bin := buildKeepwatch(t)
	rs := testenv.StartRedis(t)
	m := testenv.StartMongo(t)
	const secret = "deploy-test-secret"
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"KEEPWATCH_REDIS_URL=" + rs.URL(),
		"KEEPWATCH_MONGO_URI=" + m.URI,
		"KEEPWATCH_MONGO_DB=" + m.Database,
		"KEEPWATCH_FLUSH_INTERVAL=100ms",
	}
	out, err := exec.Command(bin, "migrate", "up", "--mongo-uri", m.URI, "--mongo-db", m.Database).CombinedOutput()
	if err != nil {
		t.Fatalf("keepwatch migrate up: %v\n%s", err, out)
	}
	tok, err := exec.Command(bin, "token", "--user", "metrics-user", "--auth-secret", secret).Output()
	if err != nil {
		t.Fatalf("keepwatch token: %v", err)
	}
	token := strings.TrimSpace(string(tok))

	urls := map[string]string{}
	for _, svc := range []string{"command", "query", "flush"} {
		addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		args := []string{svc, "--http-addr", addr}
		if svc != "flush" {
			args = append(args, "--auth-secret", secret)
		}
		cmd := exec.Command(bin, args...)
		cmd.Env = env
		logs := &testenv.Output{}
		cmd.Stdout, cmd.Stderr = logs, logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		t.Cleanup(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			<-exited
		})
		urls[svc] = "http://" + addr
		waitReady(t, urls[svc]+"/readyz", exited, logs)
	}

	// Requests that make the labelled series appear: accepted, rejected, a
	// read with the overlay, a 404.
	send(t, "POST", urls["command"]+"/v1/progress", token, `{"video_id":"v1","percent":10}`, 202)
	send(t, "POST", urls["command"]+"/v1/progress", "forged", `{"video_id":"v1","percent":10}`, 401)
	send(t, "GET", urls["query"]+"/v1/keep-watching", token, "", 200)
	send(t, "GET", urls["query"]+"/v1/progress/none", token, "", 404)

	ms := &metricSet{types: map[string]string{}, labels: map[string]map[string]bool{},
		source: "the /metrics of the real command, query and flush processes"}
	for _, svc := range []string{"command", "query", "flush"} {
		parseExposition(scrape(t, urls[svc]+"/metrics"), ms)
	}
	return ms
}

func waitReady(t *testing.T, url string, exited <-chan error, logs *testenv.Output) {
	t.Helper()
	for {
		resp, err := http.Get(url)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		select {
		case err := <-exited:
			t.Fatalf("%s: the process exited (%v) before it was ready:\n%s", url, err, logs)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func send(t *testing.T, method, url, token, body string, want int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	b, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != want {
		t.Fatalf("%s %s: %d %s, want %d", method, url, resp.StatusCode, b, want)
	}
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%s: %d %v", url, resp.StatusCode, err)
	}
	return string(b)
}

// parseExposition reads the Prometheus text format: "# TYPE name type" lines
// and samples "name{l="v",...} value".
func parseExposition(text string, into *metricSet) {
	sample := regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s`)
	label := regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="`)
	for _, line := range strings.Split(text, "\n") {
		if f := strings.Fields(line); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			if into.types[f[2]] == "" {
				into.types[f[2]] = f[3]
			}
			if into.labels[f[2]] == nil {
				into.labels[f[2]] = map[string]bool{}
			}
			continue
		}
		m := sample.FindStringSubmatch(line)
		if m == nil || strings.HasPrefix(line, "#") {
			continue
		}
		name := m[1]
		for _, suffix := range []string{"_bucket", "_count", "_sum"} {
			if b, ok := strings.CutSuffix(name, suffix); ok && into.labels[b] != nil && into.types[name] == "" {
				name = b
			}
		}
		if into.labels[name] == nil {
			into.labels[name] = map[string]bool{}
		}
		for _, l := range label.FindAllStringSubmatch(m[3], -1) {
			if l[1] != "le" && l[1] != "quantile" {
				into.labels[name][l[1]] = true
			}
		}
	}
}
