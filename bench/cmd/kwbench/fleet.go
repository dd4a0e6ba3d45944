package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/keepwatch/keepwatch/bench/fleet"
	"github.com/keepwatch/keepwatch/bench/target"
	"golang.org/x/sys/unix"
)

// runFleet simulates a player fleet against keepwatch and the baselines.
func runFleet(ctx context.Context, args []string, w io.Writer) error {
	fs := flag.NewFlagSet("fleet", flag.ContinueOnError)
	fs.SetOutput(w)
	var cf commonFlags
	cf.register(fs)
	mode := fs.String("mode", "fixed", "fixed (one rate for --duration), step (highest rate with p99 under --p99 and zero errors) or soak (fixed, long)")
	rate := fs.Float64("rate", 1000, "scheduled requests per second (fixed and soak)")
	period := fs.Duration("period", 10*time.Second, "each player's post period; players = rate × period (compress it for fewer, busier players)")
	duration := fs.Duration("duration", 20*time.Second, "length of a run (of each step in step mode; soak default 10m)")
	workers := fs.Int("workers", 256, "requests in flight at most (connections)")
	warmup := fs.Duration("warmup", 2*time.Second, "load sent before each run on the same schedule and not measured (errors still count)")
	timeout := fs.Duration("timeout", 5*time.Second, "per-request timeout (counted as an error)")
	freshness := fs.Float64("freshness", 5, "acknowledged posts per second followed until the query API shows them")
	readShare := fs.Float64("read-share", fleet.DefaultBehaviour().ReadShare, "share of slots that are frontend reads of keep-watching")
	targetFlag := fs.String("target", "auto", "keepwatch-dev, keepwatch (command on its own redis), auto (dev when the binary has it) or none (baselines only); ignored with --command-url")
	compare := fs.String("compare", "bare,naive-redis", "baselines run against the same load after keepwatch (naive-mongo is added with --mongo-uri); empty for none")
	commandURL := fs.String("command-url", "", "measure a running deployment: its command API base URL")
	queryURL := fs.String("query-url", "", "with --command-url: its query API base URL")
	metricsURLs := fs.String("metrics-urls", "", "with --command-url: comma-separated /metrics URLs (default: command and query /metrics)")
	redisURL := fs.String("redis-url", "", "with --command-url: its Redis, read with INFO for memory per entry")
	p99 := fs.Duration("p99", 10*time.Millisecond, "step mode: p99 target")
	stepStart := fs.Float64("step-start", 500, "step mode: first rate")
	stepFactor := fs.Float64("step-factor", 1.5, "step mode: rate multiplier between steps")
	stepMax := fs.Float64("step-max", 100000, "step mode: highest rate tried")
	refine := fs.Int("refine", 2, "step mode: bisections between the last pass and the first failure")
	out := fs.String("out", "", "directory for fleet.json and fleet.html (default: the run directory)")
	quiet := fs.Bool("quiet", false, "no live progress line")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *mode == "soak" && !flagSet(fs, "duration") {
		*duration = 10 * time.Minute
	}
	if *mode != "fixed" && *mode != "step" && *mode != "soak" {
		return fmt.Errorf("unknown --mode %q", *mode)
	}
	baselines, err := target.ParseKinds(*compare)
	if err != nil {
		return err
	}
	if cf.mongoURI != "" && !strings.Contains(*compare, string(target.NaiveMongo)) && *compare != "" {
		baselines = append(baselines, target.NaiveMongo)
	}
	if cf.loadCore >= 0 {
		if err := pinSelf(cf.loadCore); err != nil {
			return err
		}
	}
	cfg, err := cf.config(ctx, w)
	if err != nil {
		return err
	}
	outDir := *out
	if outDir == "" {
		outDir = cfg.Dir
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", outDir, err)
	}
	rep := &fleet.Report{Command: "kwbench fleet " + strings.Join(args, " "), Machine: machine(cf), StartedAt: time.Now(), Mode: *mode}
	var progress io.Writer = os.Stderr
	if *quiet {
		progress = nil
	}
	behaviour := fleet.DefaultBehaviour()
	behaviour.ReadShare = *readShare
	base := fleet.Config{Rate: *rate, Period: *period, Duration: *duration, Warmup: *warmup, Workers: *workers, Timeout: *timeout,
		FreshnessPerSecond: *freshness, Progress: progress}
	sc := fleet.StepConfig{Start: *stepStart, Factor: *stepFactor, Max: *stepMax, P99: *p99, Refine: *refine}

	measure := func(t fleet.Target) error {
		c := base
		c.Target, c.Label = t, t.Name
		f := fleet.NewFleet(cf.secret, behaviour)
		if *mode == "step" {
			s, err := fleet.StepSearch(ctx, f, c, sc)
			if err != nil {
				return err
			}
			if rep.Steps == nil {
				rep.Steps = map[string]*fleet.StepResult{}
			}
			rep.Steps[t.Name] = s
			if s.Best != nil {
				rep.Runs = append(rep.Runs, s.Best)
			} else if len(s.Steps) > 0 {
				rep.Runs = append(rep.Runs, s.Steps[0])
			}
			return nil
		}
		r, err := fleet.Run(ctx, f, c)
		if err != nil {
			return err
		}
		rep.Runs = append(rep.Runs, r)
		return nil
	}

	// keepwatch first: a deployment at given URLs, or one started here.
	if *commandURL != "" {
		t := fleet.Target{Name: "keepwatch", CommandURL: *commandURL, QueryURL: *queryURL, RedisURL: *redisURL}
		if *metricsURLs != "" {
			t.MetricsURLs = strings.Split(*metricsURLs, ",")
		} else {
			t.MetricsURLs = []string{*commandURL + "/metrics"}
			if *queryURL != "" {
				t.MetricsURLs = append(t.MetricsURLs, *queryURL+"/metrics")
			}
		}
		if err := measure(t); err != nil {
			return err
		}
	} else if *targetFlag != "none" {
		kind, notes := chooseKeepwatch(*targetFlag, cfg)
		rep.Notes = append(rep.Notes, notes...)
		for _, n := range notes {
			fmt.Fprintln(w, "note:", n)
		}
		if err := launchAndMeasure(ctx, kind, cfg, w, measure); err != nil {
			return err
		}
	}
	for _, k := range baselines {
		if ctx.Err() != nil {
			break
		}
		if err := launchAndMeasure(ctx, k, cfg, w, measure); err != nil {
			return err
		}
	}
	rep.Compare()
	if err := fleet.WriteText(w, rep); err != nil {
		return err
	}
	jsonPath, htmlPath := filepath.Join(outDir, "fleet.json"), filepath.Join(outDir, "fleet.html")
	if err := writeFile(jsonPath, func(f io.Writer) error { return fleet.WriteJSON(f, rep) }); err != nil {
		return err
	}
	if err := writeFile(htmlPath, func(f io.Writer) error { return fleet.WriteHTML(f, rep) }); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nreports: %s  %s\n", jsonPath, htmlPath)
	return ctx.Err()
}

// launchAndMeasure starts one target, runs the measurement and stops it.
func launchAndMeasure(ctx context.Context, k target.Kind, cfg target.Config, w io.Writer, measure func(fleet.Target) error) (err error) {
	fmt.Fprintf(w, "starting %s ...\n", k)
	run, err := target.Launch(ctx, k, cfg)
	if err != nil {
		return fmt.Errorf("%s: %w", k, err)
	}
	defer func() {
		if serr := run.Stop(); serr != nil && err == nil {
			err = serr
		}
	}()
	name := string(k)
	if b := k.Base(); b == target.Keepwatch || b == target.KeepwatchDev {
		name = "keepwatch"
	}
	t := fleet.Target{Name: name, CommandURL: run.CommandURL, QueryURL: run.QueryURL, RedisURL: run.RedisURL,
		Procs: map[string]int{}}
	if b := k.Base(); b == target.Keepwatch || b == target.KeepwatchDev {
		t.MetricsURLs = []string{run.CommandURL + "/metrics"}
		if run.QueryURL != "" && run.QueryURL != run.CommandURL {
			t.MetricsURLs = append(t.MetricsURLs, run.QueryURL+"/metrics")
		}
	} else {
		t.RedisURL = "" // a baseline's memory per entry is not what the report is about
	}
	for _, p := range run.Servers {
		t.Procs[p.Name] = p.PID()
	}
	return measure(t)
}

// chooseKeepwatch picks keepwatch dev when the binary has it, else
// `keepwatch command` (and `keepwatch query` when a MongoDB is given).
func chooseKeepwatch(want string, cfg target.Config) (target.Kind, []string) {
	has := func(sub string) bool {
		var out bytes.Buffer
		cmd := exec.Command(cfg.Keepwatch, sub, "--help")
		cmd.Stdout, cmd.Stderr = &out, &out
		_ = cmd.Run()
		return !strings.Contains(out.String(), "not built yet") && strings.Contains(out.String(), "-")
	}
	switch want {
	case "keepwatch-dev":
		return target.KeepwatchDev, nil
	case "keepwatch":
		return target.Keepwatch, nil
	}
	if has("dev") {
		return target.KeepwatchDev, nil
	}
	return target.Keepwatch, []string{"this keepwatch binary has no `dev` yet: measured `keepwatch command --flush=false` on its own redis-server; no query side, so no reads, no freshness and no flush figures"}
}

// pinSelf pins every thread of this process to core; threads created later
// inherit it. The load generator then cannot steal the servers' core.
func pinSelf(core int) error {
	var set unix.CPUSet
	set.Set(core)
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return fmt.Errorf("pin load generator: %w", err)
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, &set); err != nil {
			return fmt.Errorf("pin load generator to core %d: %w", core, err)
		}
	}
	return nil
}

func machine(cf commonFlags) fleet.Machine {
	m := fleet.Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), ServerCore: cf.serverCore, LoadCore: cf.loadCore}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = "Linux " + strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				m.CPUModel = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	return m
}

func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func writeFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if err := write(f); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", path, err)
	}
	return nil
}
