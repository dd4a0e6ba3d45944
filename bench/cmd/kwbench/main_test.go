package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keepwatch/keepwatch/bench/fleet"
	"github.com/keepwatch/keepwatch/bench/target"
)

// TestMain lets the test binary serve the baselines: the targets start
// "<self> serve --kind …", and in a test the self is this binary.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "serve" {
		ctx, stop := signalContext()
		defer stop()
		os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

func buildKeepwatch(t *testing.T) string {
	t.Helper()
	mod, err := moduleDir()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	kw, err := target.BuildKeepwatch(ctx, mod, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return kw
}

// TestFleetEndToEnd runs a few seconds of a light fleet against keepwatch
// and the baselines and checks that every figure is present and sane.
func TestFleetEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: this end-to-end fleet run builds keepwatch and starts keepwatch dev, redis-server and two baselines (~20 s); CI runs it")
	}
	kw := buildKeepwatch(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	err := runFleet(ctx, []string{"--keepwatch", kw, "--dir", dir, "--quiet",
		"--rate", "100", "--period", "5s", "--duration", "3s", "--warmup", "1s", "--workers", "32", "--freshness", "10",
		"--compare", "bare,naive-redis", "--server-core", "-1", "--load-core", "-1", "--redis-core", "-1",
		"--dev-args", "--flush-interval=1s"}, &out)
	t.Log(out.String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "fleet.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep fleet.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	html, err := os.ReadFile(filepath.Join(dir, "fleet.html"))
	if err != nil || !strings.Contains(string(html), "<svg") {
		t.Fatalf("html report missing or without plots: %v", err)
	}
	if len(rep.Runs) != 3 || len(rep.Comparisons) != 3 {
		t.Fatalf("%d runs, %d comparisons; want keepwatch, bare, naive-redis", len(rep.Runs), len(rep.Comparisons))
	}
	for _, r := range rep.Runs {
		t.Run(r.Target, func(t *testing.T) {
			if r.AchievedRate <= 0 || r.OK <= 0 {
				t.Errorf("achieved rate %v, ok %d", r.AchievedRate, r.OK)
			}
			if r.ErrorsTotal != 0 {
				t.Errorf("errors at a light rate: %v", r.Errors)
			}
			l := r.Latency
			if !(0 < l.P50MS && l.P50MS <= l.P90MS && l.P90MS <= l.P99MS && l.P99MS <= l.P999MS && l.P999MS <= l.MaxMS) {
				t.Errorf("percentiles out of order: %+v", l)
			}
			if len(r.Curve) == 0 || len(r.Series) == 0 {
				t.Error("no latency curve or time series")
			}
			if len(r.Processes) == 0 {
				t.Error("no process figures")
			}
			for _, p := range r.Processes {
				if p.RSSMaxBytes <= 0 || p.CPUCores < 0 || p.CPUPerRequestUS < 0 {
					t.Errorf("process %+v", p)
				}
			}
			if r.Target != "keepwatch" {
				return
			}
			if r.EventsAccepted == nil || *r.EventsAccepted <= 0 {
				t.Errorf("accepted events from /metrics: %v", r.EventsAccepted)
			}
			if r.FlushLagMaxS == nil || *r.FlushLagMaxS < 0 {
				t.Errorf("flush lag %v", r.FlushLagMaxS)
			}
			if r.BytesPerPendingEntry == nil || *r.BytesPerPendingEntry <= 0 || *r.BytesPerPendingEntry > 100_000 {
				t.Errorf("redis bytes per pending entry %v", r.BytesPerPendingEntry)
			}
			// With a query side (keepwatch dev), freshness and flush figures
			// must be there too.
			if r.Slots["read"] > 0 && r.ByKind["read"].Count > 0 {
				if r.Freshness == nil || r.Freshness.Count == 0 || r.FreshnessTimeouts != 0 {
					t.Errorf("freshness %+v, %d not seen", r.Freshness, r.FreshnessTimeouts)
				}
			}
			if strings.Contains(out.String(), "starting keepwatch-dev") && r.WritesPerEvent == nil {
				t.Error("keepwatch dev runs a flusher: writes to MongoDB per event missing")
			}
			if r.WritesPerEvent != nil && (*r.WritesPerEvent < 0 || *r.WritesPerEvent > 1) {
				t.Errorf("writes to MongoDB per event %v, want within [0, 1]", *r.WritesPerEvent)
			}
		})
	}
}

// TestCompareEndToEnd runs the wrk comparison briefly; it needs wrk.
func TestCompareEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: this end-to-end compare run builds keepwatch and starts three servers under wrk (~15 s); CI runs it")
	}
	if _, err := exec.LookPath("wrk"); err != nil {
		t.Fatal("wrk is not on PATH, so there is no load to drive: apt-get install wrk (.ci/run installs it)")
	}
	kw := buildKeepwatch(t)
	dir := t.TempDir()
	jsonPath := filepath.Join(dir, "compare.json")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	// A target option end to end: aof=no, not always, whose fsync per
	// commit on a disk the other tests keep busy left a run of a second
	// with a handful of requests, too few to measure CPU per request.
	err := runCompare(ctx, []string{"--keepwatch", kw, "--dir", dir, "--duration", "1s", "--warmup", "0s",
		"--connections", "8", "--users", "50", "--json", jsonPath, "--rounds", "2",
		"--targets", "bare,keepwatch:aof=no,naive-redis:pool=16",
		"--server-core", "-1", "--load-core", "-1", "--redis-core", "-1"}, &out)
	t.Log(out.String())
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Results []compareResult `json:"results"`
		Summary []targetSummary `json:"summary"`
	}
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Results) != 6 {
		t.Fatalf("%d results, want bare, keepwatch, naive-redis twice", len(got.Results))
	}
	bare := map[int]float64{}
	for _, r := range got.Results {
		if r.Result.RPS <= 0 || r.Result.Errors() != 0 || r.Ratio <= 0 || r.Result.P50 > r.Result.P99 {
			t.Errorf("%s: %+v ratio %v", r.Target, r.Result, r.Ratio)
		}
		if r.Target == "bare" {
			bare[r.Round] = r.Result.RPS
		}
		// Every server spends CPU on each request; only the targets with a
		// Redis show Redis CPU.
		if r.ServerUS <= 0 || (r.RedisUS > 0) == (r.Target == "bare") {
			t.Errorf("%s: %.2f µs of server CPU and %.2f µs of Redis CPU per request", r.Target, r.ServerUS, r.RedisUS)
		}
	}
	// Each ratio is to the bare run of its own round.
	for _, r := range got.Results {
		if want := r.Result.RPS / bare[r.Round]; math.Abs(r.Ratio-want) > 1e-9 {
			t.Errorf("round %d %s: ratio %v, want %v", r.Round, r.Target, r.Ratio, want)
		}
	}
	if len(got.Summary) != 3 {
		t.Fatalf("summary %+v, want one line per target", got.Summary)
	}
	for _, s := range got.Summary {
		if s.Rounds != 2 || s.Ratio.Min > s.Ratio.Median || s.Ratio.Median > s.Ratio.Max || s.RPS.Median <= 0 {
			t.Errorf("summary %+v", s)
		}
	}
	for _, want := range []string{"over 2 rounds", "keepwatch:aof=no", "naive-redis:pool=16", "redis µs/req"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("%q not printed:\n%s", want, out.String())
		}
	}
}

func TestParseKindsWithOptions(t *testing.T) {
	ks, err := target.ParseKinds("bare, keepwatch:aof=always,naive-redis:pool=64+aof=no")
	if err != nil {
		t.Fatal(err)
	}
	if len(ks) != 3 || ks[1].Base() != target.Keepwatch || ks[1].Option("aof") != "always" ||
		ks[2].Base() != target.NaiveRedis || ks[2].Option("pool") != "64" || ks[2].Option("aof") != "no" || ks[0].Option("aof") != "" {
		t.Fatalf("parsed %q", ks)
	}
	ks, err = target.ParseKinds("keepwatch:commit-workers=1+aof=always")
	if err != nil || strings.Join(ks[0].Flags(), " ") != "--commit-workers=1" || ks[0].Option("aof") != "always" {
		t.Fatalf("parsed %q: flags %q, %v", ks, ks[0].Flags(), err)
	}
	for _, bad := range []string{"keepwatch:aof=sometimes", "bare:pool=3", "naive-redis:pool=x", "nope", "naive-redis:commit-workers=1"} {
		if _, err := target.ParseKinds(bad); err == nil {
			t.Errorf("ParseKinds(%q) accepted it", bad)
		}
	}
}
