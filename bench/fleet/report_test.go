package fleet

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"
)

func sampleReport() *Report {
	h := NewHist()
	for i := 1; i <= 1000; i++ {
		Record(h, time.Duration(i)*time.Microsecond)
	}
	f, lag, wpe, bpe := Summarize(h), 1.5, 0.2, 180.0
	acc := 1000.0
	run := func(name string, cpu float64, kw bool) *RunReport {
		r := &RunReport{Target: name, ScheduledRate: 100, AchievedRate: 99, Players: 1000, PeriodS: 10, DurationS: 10,
			OK: 1000, Errors: map[string]int64{}, Latency: Summarize(h), Curve: Curve(h),
			ByKind:    map[string]Summary{"post": Summarize(h)},
			Series:    []SecondPoint{{T: 0, OK: 99, P50MS: 0.5, P99MS: 1}, {T: 1, OK: 100, P50MS: 0.5, P99MS: 0.9}},
			Processes: []ProcUsage{{Name: name, CPUCores: 0.1, CPUPerRequestUS: cpu, RSSMaxBytes: 20 << 20}}}
		if kw {
			r.Freshness, r.FlushLagMaxS, r.FlushLagLastS, r.WritesPerEvent, r.BytesPerPendingEntry, r.EventsAccepted = &f, &lag, &lag, &wpe, &bpe, &acc
			r.Samples = []SamplePoint{{T: 0, Pending: 10, OldestAgeS: 1}, {T: 1, Pending: 20, OldestAgeS: 1.5}}
		}
		return r
	}
	r := &Report{Command: "kwbench fleet --rate 100", Mode: "fixed", StartedAt: time.Unix(1732240000, 0).UTC(),
		Machine: Machine{CPUs: 2, CPUModel: "test cpu", GoVersion: "go1.26"},
		Runs:    []*RunReport{run("keepwatch", 30, true), run("bare", 10, false), run("naive-redis", 60, false)}}
	r.Steps = map[string]*StepResult{"keepwatch": {P99TargetMS: 10, MaxRate: 150, Steps: []*RunReport{r.Runs[0]}, Passed: []bool{true}}}
	r.Compare()
	return r
}

func TestCompareRatios(t *testing.T) {
	r := sampleReport()
	byName := map[string]Comparison{}
	for _, c := range r.Comparisons {
		byName[c.Target] = c
	}
	if got := byName["keepwatch"].CPUVsBare; got != 3 {
		t.Errorf("keepwatch CPU vs bare = %v, want 3", got)
	}
	if got := byName["naive-redis"].CPUVsBare; got != 6 {
		t.Errorf("naive CPU vs bare = %v, want 6", got)
	}
	if byName["keepwatch"].MaxRate != 150 {
		t.Errorf("max rate %v, want 150 from the step search", byName["keepwatch"].MaxRate)
	}
}

func TestTextReportHasEveryFigure(t *testing.T) {
	var b bytes.Buffer
	if err := WriteText(&b, sampleReport()); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"p50 ", "p99 ", "p99.9 ", "errors: 0", "freshness", "flush lag max 1.5s",
		"MongoDB writes/event 0.200", "Redis bytes/pending entry 180", "CPU 0.10 cores", "side by side", "3.00×", "step search keepwatch"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, b.String())
		}
	}
}

func TestHTMLReportIsSelfContained(t *testing.T) {
	var b bytes.Buffer
	if err := WriteHTML(&b, sampleReport()); err != nil {
		t.Fatal(err)
	}
	html := b.String()
	if n := strings.Count(html, "<svg"); n < 6 {
		t.Errorf("%d plots, want the curve, throughput, p99, flush lag, pending and comparisons", n)
	}
	// No network: no scripts, stylesheets or images from anywhere; the only
	// URL is the SVG namespace.
	for _, bad := range []string{"<script", "<link", "<img", "@import"} {
		if strings.Contains(html, bad) {
			t.Errorf("report contains %q", bad)
		}
	}
	for _, u := range regexp.MustCompile(`https?://[^"' <]+`).FindAllString(html, -1) {
		if u != "http://www.w3.org/2000/svg" {
			t.Errorf("report references %s", u)
		}
	}
}

func TestJSONReportRoundTrips(t *testing.T) {
	var b bytes.Buffer
	if err := WriteJSON(&b, sampleReport()); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	kw := back.Runs[0]
	if kw.Freshness == nil || kw.WritesPerEvent == nil || kw.BytesPerPendingEntry == nil || kw.FlushLagMaxS == nil ||
		len(kw.Curve) == 0 || len(kw.Processes) == 0 || len(back.Comparisons) != 3 {
		t.Errorf("figures lost in JSON: %+v", kw)
	}
}

func TestParseMetrics(t *testing.T) {
	in := `# HELP keepwatch_events_rejected_total Rejected events.
# TYPE keepwatch_events_rejected_total counter
keepwatch_events_rejected_total{reason="invalid field"} 3
keepwatch_events_rejected_total{reason="rate {limited}"} 4
keepwatch_events_accepted_total 1.5e3
keepwatch_buffer_pending_entries 42 1732240000000
`
	m, err := ParseMetrics(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := Metrics{mRejected: 7, mAccepted: 1500, mPending: 42}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %v, want %v", k, m[k], v)
		}
	}
	if _, err := ParseMetrics(strings.NewReader("broken{a=\"b\" 1\n")); err == nil {
		t.Error("unclosed labels parsed without error")
	}
}

func TestPlayersBehaveDeterministically(t *testing.T) {
	b := DefaultBehaviour()
	b.Offline, b.OfflineTicks = 0.2, 3
	kinds := map[Kind]int{}
	p1, p2 := newPlayer(7, b), newPlayer(7, b)
	now := time.Unix(1732240000, 0)
	for i := 0; i < 2000; i++ {
		a1, a2 := p1.tick(b, now), p2.tick(b, now)
		if a1.Kind != a2.Kind || a1.Event != a2.Event || len(a1.Batch) != len(a2.Batch) {
			t.Fatalf("tick %d: the same player diverged: %+v vs %+v", i, a1, a2)
		}
		kinds[a1.Kind]++
		if a1.Kind == KindBatch && (len(a1.Batch) != b.OfflineTicks || len(a1.Batch) > 100) {
			t.Fatalf("batch of %d events after %d offline ticks", len(a1.Batch), b.OfflineTicks)
		}
		if a1.Kind == KindPost && (a1.Event.Percent < 0 || a1.Event.Percent > 100) {
			t.Fatalf("percent %v", a1.Event.Percent)
		}
	}
	for _, k := range []Kind{KindPost, KindBatch, KindRead, KindIdle} {
		if kinds[k] == 0 {
			t.Errorf("no %s in 2000 ticks: %v", k, kinds)
		}
	}
}
