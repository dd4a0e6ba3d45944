package fleet

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is everything one kwbench fleet invocation measured.
type Report struct {
	Command   string    `json:"command"`
	Machine   Machine   `json:"machine"`
	StartedAt time.Time `json:"started_at"`
	Mode      string    `json:"mode"`
	// Runs are the main run of each target (fixed and soak modes, or the
	// last passing step of a step search).
	Runs []*RunReport `json:"runs"`
	// Steps are a step search's runs per target.
	Steps       map[string]*StepResult `json:"steps,omitempty"`
	Comparisons []Comparison           `json:"comparisons"`
	Notes       []string               `json:"notes,omitempty"`
}

// Machine says where the figures come from.
type Machine struct {
	CPUs       int    `json:"cpus"`
	CPUModel   string `json:"cpu_model"`
	Kernel     string `json:"kernel"`
	GoVersion  string `json:"go_version"`
	ServerCore int    `json:"server_core"`
	LoadCore   int    `json:"load_core"`
}

// Comparison is one target's headline figures beside the others'.
type Comparison struct {
	Target          string  `json:"target"`
	AchievedRate    float64 `json:"achieved_rate"`
	P50MS           float64 `json:"p50_ms"`
	P99MS           float64 `json:"p99_ms"`
	Errors          int64   `json:"errors"`
	CPUPerRequestUS float64 `json:"cpu_us_per_request"`
	// MaxRate is the step search's highest passing rate (0 without one).
	MaxRate float64 `json:"max_rate,omitempty"`
	// Ratios relative to the bare server: max rate (higher is better) and
	// CPU per request (lower is better).
	MaxRateVsBare float64 `json:"max_rate_vs_bare,omitempty"`
	CPUVsBare     float64 `json:"cpu_per_request_vs_bare,omitempty"`
	P99VsBare     float64 `json:"p99_vs_bare,omitempty"`
}

// StepConfig is a step search: rates Start, Start×Factor, … up to Max, each
// for the run's Duration; a step passes with zero errors and p99 ≤ P99.
type StepConfig struct {
	Start  float64
	Factor float64
	Max    float64
	P99    time.Duration
	// Refine bisects between the last pass and the first failure this many
	// times.
	Refine int
}

// StepResult is a step search's outcome.
type StepResult struct {
	P99TargetMS float64      `json:"p99_target_ms"`
	MaxRate     float64      `json:"max_rate"`
	Steps       []*RunReport `json:"steps"`
	Passed      []bool       `json:"passed"`
	Best        *RunReport   `json:"-"`
}

// Passes reports whether r meets the step search's bar.
func (sc StepConfig) Passes(r *RunReport) bool {
	return r.ErrorsTotal == 0 && r.Latency.Count > 0 && r.Latency.P99MS <= float64(sc.P99)/float64(time.Millisecond)
}

// StepSearch runs increasing rates until one fails, then bisects.
func StepSearch(ctx context.Context, f *Fleet, cfg Config, sc StepConfig) (*StepResult, error) {
	res := &StepResult{P99TargetMS: float64(sc.P99) / float64(time.Millisecond)}
	if sc.Factor <= 1 {
		sc.Factor = 1.5
	}
	label := cfg.Label
	try := func(rate float64) (bool, error) {
		c := cfg
		c.Rate = rate
		c.Label = fmt.Sprintf("%s step %.0f/s", label, rate)
		r, err := Run(ctx, f, c)
		if err != nil {
			return false, err
		}
		ok := sc.Passes(r)
		res.Steps = append(res.Steps, r)
		res.Passed = append(res.Passed, ok)
		if ok && rate > res.MaxRate {
			res.MaxRate, res.Best = rate, r
		}
		return ok, nil
	}
	lo, hi := 0.0, 0.0
	for rate := sc.Start; rate <= sc.Max && ctx.Err() == nil; rate *= sc.Factor {
		ok, err := try(rate)
		if err != nil {
			return res, err
		}
		if !ok {
			hi = rate
			break
		}
		lo = rate
	}
	for i := 0; i < sc.Refine && hi > 0 && lo > 0 && ctx.Err() == nil; i++ {
		mid := (lo + hi) / 2
		ok, err := try(mid)
		if err != nil {
			return res, err
		}
		if ok {
			lo = mid
		} else {
			hi = mid
		}
	}
	return res, ctx.Err()
}

// Compare fills r.Comparisons from its runs and step searches.
func (r *Report) Compare() {
	r.Comparisons = nil
	var bare *Comparison
	for _, run := range r.Runs {
		c := Comparison{Target: run.Target, AchievedRate: run.AchievedRate, P50MS: run.Latency.P50MS,
			P99MS: run.Latency.P99MS, Errors: run.ErrorsTotal}
		for _, p := range run.Processes {
			c.CPUPerRequestUS += p.CPUPerRequestUS
		}
		if s := r.Steps[run.Target]; s != nil {
			c.MaxRate = s.MaxRate
		}
		r.Comparisons = append(r.Comparisons, c)
	}
	for i := range r.Comparisons {
		if r.Comparisons[i].Target == "bare" {
			bare = &r.Comparisons[i]
		}
	}
	if bare == nil {
		return
	}
	for i := range r.Comparisons {
		c := &r.Comparisons[i]
		if bare.MaxRate > 0 {
			c.MaxRateVsBare = c.MaxRate / bare.MaxRate
		}
		if bare.CPUPerRequestUS > 0 {
			c.CPUVsBare = c.CPUPerRequestUS / bare.CPUPerRequestUS
		}
		if bare.P99MS > 0 {
			c.P99VsBare = c.P99MS / bare.P99MS
		}
	}
}

func optF(p *float64, format string) string {
	if p == nil {
		return "n/a"
	}
	return fmt.Sprintf(format, *p)
}

// WriteText prints the plain-text summary.
func WriteText(w io.Writer, r *Report) error {
	var b strings.Builder
	fmt.Fprintf(&b, "kwbench fleet — %s mode, %s\n", r.Mode, r.StartedAt.Format(time.RFC3339))
	fmt.Fprintf(&b, "machine: %d CPUs (%s), %s, %s; servers on core %d, load on core %d\n",
		r.Machine.CPUs, r.Machine.CPUModel, r.Machine.Kernel, r.Machine.GoVersion, r.Machine.ServerCore, r.Machine.LoadCore)
	fmt.Fprintf(&b, "command: %s\n", r.Command)
	for _, run := range r.Runs {
		fmt.Fprintf(&b, "\n== %s: %.0f req/s scheduled (%d players every %.1fs), %.0f/s achieved over %.0fs\n",
			run.Target, run.ScheduledRate, run.Players, run.PeriodS, run.AchievedRate, run.DurationS)
		l := run.Latency
		fmt.Fprintf(&b, "   latency from schedule: p50 %.2fms  p90 %.2fms  p99 %.2fms  p99.9 %.2fms  max %.2fms  (%d ok)\n",
			l.P50MS, l.P90MS, l.P99MS, l.P999MS, l.MaxMS, l.Count)
		kinds := make([]string, 0, len(run.ByKind))
		for k := range run.ByKind {
			kinds = append(kinds, k)
		}
		sort.Strings(kinds)
		for _, k := range kinds {
			s := run.ByKind[k]
			fmt.Fprintf(&b, "     %-6s %7d ok  p50 %.2fms  p99 %.2fms  max %.2fms\n", k, s.Count, s.P50MS, s.P99MS, s.MaxMS)
		}
		fmt.Fprintf(&b, "   errors: %d %v\n", run.ErrorsTotal, run.Errors)
		if run.Freshness != nil {
			fmt.Fprintf(&b, "   freshness (202 → visible in query API): p50 %.2fms  p99 %.2fms  max %.2fms  (%d samples, %d not seen in 10s)\n",
				run.Freshness.P50MS, run.Freshness.P99MS, run.Freshness.MaxMS, run.Freshness.Count, run.FreshnessTimeouts)
		}
		if run.EventsAccepted != nil {
			fmt.Fprintf(&b, "   flush lag max %ss (last %ss)  MongoDB writes/event %s  dead letters %s  Redis bytes/pending entry %s\n",
				optF(run.FlushLagMaxS, "%.1f"), optF(run.FlushLagLastS, "%.1f"), optF(run.WritesPerEvent, "%.3f"),
				optF(run.DeadLettered, "%.0f"), optF(run.BytesPerPendingEntry, "%.0f"))
		}
		for _, p := range run.Processes {
			fmt.Fprintf(&b, "   process %-18s CPU %.2f cores (%.1f µs/request)  RSS max %.1f MiB\n",
				p.Name, p.CPUCores, p.CPUPerRequestUS, float64(p.RSSMaxBytes)/(1<<20))
		}
	}
	for name, s := range r.Steps {
		fmt.Fprintf(&b, "\n== step search %s (p99 ≤ %.1fms, zero errors): max %.0f req/s\n", name, s.P99TargetMS, s.MaxRate)
		for i, st := range s.Steps {
			verdict := "pass"
			if !s.Passed[i] {
				verdict = "FAIL"
			}
			fmt.Fprintf(&b, "   %8.0f/s  achieved %8.0f/s  p99 %8.2fms  errors %d  %s\n", st.ScheduledRate, st.AchievedRate, st.Latency.P99MS, st.ErrorsTotal, verdict)
		}
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("write summary: %w", err)
	}
	if len(r.Comparisons) > 0 {
		fmt.Fprintln(w, "\n== side by side (same load)")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "target\tachieved/s\tp50 ms\tp99 ms\terrors\tCPU µs/req\tCPU vs bare\tmax rate/s\tmax rate vs bare\t")
		for _, c := range r.Comparisons {
			ratio := func(v float64) string {
				if v == 0 {
					return "-"
				}
				return fmt.Sprintf("%.2f×", v)
			}
			mr := "-"
			if c.MaxRate > 0 {
				mr = fmt.Sprintf("%.0f", c.MaxRate)
			}
			fmt.Fprintf(tw, "%s\t%.0f\t%.2f\t%.2f\t%d\t%.1f\t%s\t%s\t%s\t\n", c.Target, c.AchievedRate, c.P50MS, c.P99MS,
				c.Errors, c.CPUPerRequestUS, ratio(c.CPUVsBare), mr, ratio(c.MaxRateVsBare))
		}
		if err := tw.Flush(); err != nil {
			return fmt.Errorf("write summary: %w", err)
		}
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	return nil
}
