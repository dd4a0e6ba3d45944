package deploy_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

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
		urls[svc] = "http://" + addr
		testenv.StartProc(t, cmd).WaitHTTP(urls[svc]+"/readyz", http.StatusOK, time.Minute)
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
		ms.add(testenv.Scrape(t, urls[svc]+"/metrics"))
	}
	return ms
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

// metricSet is what the services export: metric names with their type and
// label names.
type metricSet struct {
	types  map[string]string
	labels map[string]map[string]bool
	source string
}

// add records every family of a scrape: its type and the label names of its
// series (le and quantile belong to the type, not to the metric).
func (ms *metricSet) add(fams map[string]*dto.MetricFamily) {
	for name, mf := range fams {
		if ms.types[name] == "" {
			ms.types[name] = strings.ToLower(mf.GetType().String())
		}
		if ms.labels[name] == nil {
			ms.labels[name] = map[string]bool{}
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				ms.labels[name][l.GetName()] = true
			}
		}
	}
}

// contractMetrics is the metric list of the contract: the real services must
// export every one of them, with these types and labels.
func contractMetrics() *metricSet {
	ms := &metricSet{types: map[string]string{}, labels: map[string]map[string]bool{}, source: "the contract's metric list"}
	add := func(name, typ string, labels ...string) {
		ms.types[name] = typ
		ms.labels[name] = map[string]bool{}
		for _, l := range labels {
			ms.labels[name][l] = true
		}
	}
	add("keepwatch_events_accepted_total", "counter")
	add("keepwatch_events_rejected_total", "counter", "reason")
	add("keepwatch_http_request_duration_seconds", "histogram", "service", "route", "code")
	for _, g := range []string{"keepwatch_buffer_pending_entries", "keepwatch_buffer_oldest_pending_age_seconds",
		"keepwatch_buffer_high_water_entries", "keepwatch_dead_letters", "keepwatch_ready"} {
		add(g, "gauge")
	}
	for _, h := range []string{"keepwatch_commit_batch_size", "keepwatch_commit_duration_seconds",
		"keepwatch_flush_batch_size", "keepwatch_flush_duration_seconds"} {
		add(h, "histogram")
	}
	for _, c := range []string{"keepwatch_flush_written_total", "keepwatch_flush_stale_total", "keepwatch_flush_retried_total",
		"keepwatch_flush_dead_lettered_total", "keepwatch_query_overlay_hits_total", "keepwatch_query_overlay_errors_total",
		"keepwatch_query_mongo_errors_total", "keepwatch_query_not_modified_total"} {
		add(c, "counter")
	}
	return ms
}

var (
	metricName = regexp.MustCompile(`\bkeepwatch_[a-zA-Z0-9_]+`)
	byClause   = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	matcher    = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"`)
)

// checkQuery checks that expr names only exported metrics (histogram and
// summary series by their suffixes) and only labels those metrics carry.
func checkQuery(t *testing.T, where, expr string, ms *metricSet) {
	t.Helper()
	if strings.Count(expr, "(") != strings.Count(expr, ")") || strings.Count(expr, "{") != strings.Count(expr, "}") {
		t.Errorf("%s: unbalanced brackets in %q", where, expr)
	}
	names := metricName.FindAllString(expr, -1)
	if len(names) == 0 {
		t.Errorf("%s: names no keepwatch_ metric: %q", where, expr)
	}
	labels := map[string]bool{"job": true, "instance": true}
	for _, n := range names {
		base, typ := n, ms.types[n]
		if typ == "" {
			for _, suffix := range []string{"_bucket", "_count", "_sum"} {
				if b, ok := strings.CutSuffix(n, suffix); ok && (ms.types[b] == "histogram" || (ms.types[b] == "summary" && suffix != "_bucket")) {
					base, typ = b, ms.types[b]
					if suffix == "_bucket" {
						labels["le"] = true
					}
				}
			}
		}
		if typ == "" {
			t.Errorf("%s: metric %s is not exported (checked against %s)", where, n, ms.source)
			continue
		}
		for l := range ms.labels[base] {
			labels[l] = true
		}
	}
	var used []string
	for _, m := range byClause.FindAllStringSubmatch(expr, -1) {
		for _, l := range strings.Split(m[1], ",") {
			if l = strings.TrimSpace(l); l != "" {
				used = append(used, l)
			}
		}
	}
	for _, m := range matcher.FindAllStringSubmatch(expr, -1) {
		used = append(used, m[1])
	}
	for _, l := range used {
		if !labels[l] {
			t.Errorf("%s: label %q is not on %v (checked against %s)", where, l, names, ms.source)
		}
	}
}

func TestAlertAndDashboardMetricsExist(t *testing.T) {
	qs := alertQueries(t)
	for k, q := range dashboardQueries(t) {
		qs[k] = q
	}
	ms := exportedMetrics(t)
	t.Logf("metric names checked against %s", ms.source)
	for name, typ := range contractMetrics().types {
		if ms.types[name] != typ {
			t.Errorf("the contract's %s %s is exported as %q", typ, name, ms.types[name])
		}
		for l := range contractMetrics().labels[name] {
			if !ms.labels[name][l] {
				t.Errorf("the contract's %s has no label %q in the real /metrics", name, l)
			}
		}
	}
	for _, want := range []string{"keepwatch_buffer_oldest_pending_age_seconds", "keepwatch_dead_letters",
		"keepwatch_flush_dead_lettered_total", "keepwatch_http_request_duration_seconds_count",
		"keepwatch_buffer_pending_entries", "keepwatch_buffer_high_water_entries"} {
		found := false
		for k, q := range qs {
			found = found || (strings.HasPrefix(k, "alert ") && strings.Contains(q, want))
		}
		if !found {
			t.Errorf("no alert uses %s", want)
		}
	}
	keys := make([]string, 0, len(qs))
	for k := range qs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		checkQuery(t, k, qs[k], ms)
	}
}
