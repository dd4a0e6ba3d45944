package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/keepwatch/keepwatch/bench/proc"
	"github.com/keepwatch/keepwatch/bench/target"
	"github.com/keepwatch/keepwatch/bench/token"
	"github.com/keepwatch/keepwatch/bench/wrk"
)

// compareResult is one target's line of the comparison.
type compareResult struct {
	Target string `json:"target"`
	// Round counts from 1; ratios are to the bare run of the same round.
	Round  int        `json:"round"`
	Result wrk.Result `json:"result"`
	// ServerCPU is the CPU the server processes used per second of the
	// measured run (1.0 = one full core).
	ServerCPU float64 `json:"server_cpu_cores"`
	ServerRSS int64   `json:"server_rss_bytes"`
	// ServerUS and RedisUS are the CPU time the server processes and the
	// target's redis-server spent per request, in µs (RedisUS is 0 for a
	// target without Redis). Redis is the one piece every command instance
	// shares, so its cost per event bounds the whole fleet.
	ServerUS float64 `json:"server_cpu_us_per_request"`
	RedisUS  float64 `json:"redis_cpu_us_per_request"`
	Ratio    float64 `json:"ratio_to_bare"`
	// PerCore is requests/s per core of server CPU: the throughput the
	// server would reach with its core to itself, robust when other work
	// shares the machine.
	PerCore      float64 `json:"rps_per_server_core"`
	PerCoreRatio float64 `json:"per_core_ratio_to_bare"`
}

// commonFlags are the flags compare and fleet share: what to start and where.
type commonFlags struct {
	keepwatch  string
	secret     string
	serverCore int
	loadCore   int
	redisCore  int
	mongoURI   string
	redisAOF   string
	dir        string
	kwArgs     string
	devArgs    string
}

func (c *commonFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.keepwatch, "keepwatch", "", "keepwatch binary (default: go build ./cmd/keepwatch into the run directory)")
	fs.StringVar(&c.secret, "secret", "kwbench-secret", "HS256 secret given to every server and used to mint tokens")
	fs.IntVar(&c.serverCore, "server-core", 0, "CPU core each server is pinned to, with GOMAXPROCS=1 (-1: not pinned)")
	fs.IntVar(&c.loadCore, "load-core", 1, "CPU core the load generator is pinned to (-1: not pinned)")
	fs.IntVar(&c.redisCore, "redis-core", 1, "CPU core each redis-server is pinned to (-1: not pinned)")
	fs.StringVar(&c.mongoURI, "mongo-uri", "", "a real MongoDB: adds the naive-mongo baseline (one upsert per request)")
	fs.StringVar(&c.redisAOF, "redis-aof", "everysec", "persistence of every target's redis-server: no, everysec (production's recommendation) or always; a target may set its own (keepwatch:aof=always)")
	fs.StringVar(&c.dir, "dir", "", "directory for logs, tokens and reports (default: a new temporary directory)")
	fs.StringVar(&c.devArgs, "dev-args", "", "extra arguments of `keepwatch dev` (space-separated), e.g. --flush-interval=30s")
	fs.StringVar(&c.kwArgs, "keepwatch-args", "--rate-limit=1000000 --rate-burst=1000000",
		"extra arguments of `keepwatch command` (space-separated); the default relaxes the per-user rate limit, since each simulated user posts far more often than a player")
}

// config builds the launch configuration, building keepwatch when needed.
func (c *commonFlags) config(ctx context.Context, w io.Writer) (target.Config, error) {
	if c.dir == "" {
		d, err := os.MkdirTemp("", "kwbench-")
		if err != nil {
			return target.Config{}, fmt.Errorf("create run directory: %w", err)
		}
		c.dir = d
	} else if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return target.Config{}, fmt.Errorf("create run directory: %w", err)
	}
	self, err := os.Executable()
	if err != nil {
		return target.Config{}, fmt.Errorf("find own executable: %w", err)
	}
	kw := c.keepwatch
	if kw == "" {
		mod, err := moduleDir()
		if err != nil {
			return target.Config{}, err
		}
		fmt.Fprintf(w, "building keepwatch from %s ...\n", mod)
		if kw, err = target.BuildKeepwatch(ctx, mod, c.dir); err != nil {
			return target.Config{}, err
		}
	}
	return target.Config{
		Self: self, Keepwatch: kw, Dir: c.dir, Secret: c.secret,
		ServerCore: c.serverCore, RedisCore: c.redisCore, MongoURI: c.mongoURI,
		KeepwatchArgs: strings.Fields(c.kwArgs), DevArgs: strings.Fields(c.devArgs), RedisAOF: c.redisAOF,
	}, nil
}

// moduleDir finds the keepwatch module root from the working directory up.
func moduleDir() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find module: %w", err)
	}
	for {
		b, err := os.ReadFile(filepath.Join(d, "go.mod"))
		if err == nil && strings.Contains(string(b), "module github.com/keepwatch/keepwatch\n") {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", errors.New("not inside the keepwatch module: run from its checkout or pass --keepwatch")
		}
		d = parent
	}
}

// runCompare runs the same closed-loop wrk load against each target in turn.
func runCompare(ctx context.Context, args []string, w io.Writer) error {
	fs := flag.NewFlagSet("compare", flag.ContinueOnError)
	fs.SetOutput(w)
	var cf commonFlags
	cf.register(fs)
	duration := fs.Duration("duration", 15*time.Second, "measured time per target")
	warmup := fs.Duration("warmup", 3*time.Second, "unmeasured load before each measurement (fills token caches, connections)")
	conns := fs.Int("connections", 64, "wrk connections")
	threads := fs.Int("threads", 1, "wrk threads")
	users := fs.Int("users", 10000, "distinct users (one token each) the requests rotate over")
	videos := fs.Int("videos", 4, "videos per user")
	targets := fs.String("targets", "bare,keepwatch,naive-redis", "targets in order, comma-separated (naive-mongo is added when --mongo-uri is set); options after a colon, joined by +: keepwatch:aof=always, naive-redis:pool=64")
	jsonOut := fs.String("json", "", "also write the figures as JSON to this file")
	rounds := fs.Int("rounds", 1, "run the targets this many times, alternating, and summarize each target's ratio to bare over the rounds (medians resist a noisy machine better than one run)")
	profile := fs.Bool("profile", false, "take a CPU profile of keepwatch during its measured run (keepwatch.cpu.pprof in the run directory; inspect with go tool pprof -top)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	kinds, err := target.ParseKinds(*targets)
	if err != nil {
		return err
	}
	if *rounds < 1 {
		return fmt.Errorf("--rounds must be at least 1, got %d", *rounds)
	}
	if cf.mongoURI != "" && !strings.Contains(*targets, string(target.NaiveMongo)) {
		kinds = append(kinds, target.NaiveMongo)
	}
	cfg, err := cf.config(ctx, w)
	if err != nil {
		return err
	}
	var prof *profiler
	if *profile {
		prof = &profiler{token: "kwbench-admin", path: filepath.Join(cfg.Dir, "keepwatch.cpu.pprof")}
		cfg.KeepwatchArgs = append(cfg.KeepwatchArgs, "--admin-token", prof.token)
	}
	toks, err := token.Pool(cf.secret, "bench-user-", *users, 24*time.Hour)
	if err != nil {
		return err
	}
	wo := wrk.Options{Connections: *conns, Threads: *threads, Timeout: 2 * time.Second, Tokens: toks,
		Videos: *videos, Core: cf.loadCore, Dir: cfg.Dir}
	if err := wrk.Prepare(wo); err != nil {
		return err
	}
	fmt.Fprintf(w, "run directory %s; each server on core %d (GOMAXPROCS=1), wrk on core %d (-t%d -c%d), redis on core %d, %s per target after %s warm-up, %d users\n",
		cfg.Dir, cf.serverCore, cf.loadCore, *threads, *conns, cf.redisCore, *duration, *warmup, *users)
	var results []compareResult
	for round := 1; round <= *rounds; round++ {
		for _, k := range kinds {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var p *profiler
			if k.Base() == target.Keepwatch && round == 1 {
				p = prof
			}
			res, err := compareOne(ctx, k, cfg, wo, *warmup, *duration, p)
			if err != nil {
				return fmt.Errorf("%s: %w", k, err)
			}
			res.Round = round
			fmt.Fprintf(w, "  %-12s %9.0f req/s  p50 %-9s p99 %-9s errors %d  server %.1f µs/req  redis %.1f µs/req\n", k, res.Result.RPS,
				fmtDur(res.Result.P50), fmtDur(res.Result.P99), res.Result.Errors(), res.ServerUS, res.RedisUS)
			results = append(results, res)
		}
	}
	setRatios(results)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "round\ttarget\treq/s\tp50\tp90\tp99\tmax\terrors\tserver CPU\treq/s per core\tserver µs/req\tredis µs/req\tRSS\tvs bare\tper core vs bare\t")
	for i := range results {
		r := &results[i]
		ratio, pcRatio := "-", "-"
		if r.Ratio > 0 {
			ratio = fmt.Sprintf("%.2f×", r.Ratio)
		}
		if r.PerCoreRatio > 0 {
			pcRatio = fmt.Sprintf("%.2f×", r.PerCoreRatio)
		}
		redisUS := "-"
		if r.RedisUS > 0 {
			redisUS = fmt.Sprintf("%.1f", r.RedisUS)
		}
		fmt.Fprintf(tw, "%d\t%s\t%.0f\t%s\t%s\t%s\t%s\t%d\t%.2f\t%.0f\t%.1f\t%s\t%.0f MiB\t%s\t%s\t\n", r.Round, r.Target, r.Result.RPS,
			fmtDur(r.Result.P50), fmtDur(r.Result.P90), fmtDur(r.Result.P99), fmtDur(r.Result.Max),
			r.Result.Errors(), r.ServerCPU, r.PerCore, r.ServerUS, redisUS, float64(r.ServerRSS)/(1<<20), ratio, pcRatio)
	}
	fmt.Fprintln(w)
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("print results: %w", err)
	}
	summary := summarize(results, kinds)
	if *rounds > 1 {
		fmt.Fprintf(w, "\nover %d rounds (median, min–max):\n", *rounds)
		for _, s := range summary {
			fmt.Fprintf(w, "  %-12s %7.0f req/s (%.0f–%.0f)  vs bare %.2f× (%.2f–%.2f×)  per core vs bare %.2f× (%.2f–%.2f×)  server %.1f µs/req  redis %.1f µs/req  p99 %s  errors %d\n",
				s.Target, s.RPS.Median, s.RPS.Min, s.RPS.Max, s.Ratio.Median, s.Ratio.Min, s.Ratio.Max,
				s.PerCoreRatio.Median, s.PerCoreRatio.Min, s.PerCoreRatio.Max, s.ServerUS.Median, s.RedisUS.Median,
				fmtDur(time.Duration(s.P99.Median)), s.Errors)
		}
	}
	fmt.Fprintln(w, "errors = answers other than 2xx/3xx (wrk counts status > 399) + socket errors + timeouts")
	fmt.Fprintln(w, "server CPU = cores the server used during the run (1.00 = its core to itself; less means other work shared the core)")
	fmt.Fprintln(w, "server/redis µs/req = CPU time the server processes / the target's redis-server spent per request answered")
	if prof != nil {
		fmt.Fprintf(w, "keepwatch CPU profile: %s (go tool pprof -top %s)\n", prof.path, prof.path)
	}
	if *jsonOut != "" {
		b, err := json.MarshalIndent(map[string]any{"duration": duration.String(), "connections": *conns,
			"users": *users, "server_core": cf.serverCore, "load_core": cf.loadCore, "rounds": *rounds,
			"results": results, "summary": summary}, "", "  ")
		if err != nil {
			return fmt.Errorf("encode results: %w", err)
		}
		if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			return fmt.Errorf("write %s: %w", *jsonOut, err)
		}
	}
	return nil
}

// setRatios fills per-core throughput and each result's ratios to the bare
// run of its round (none when the round has no bare run).
func setRatios(results []compareResult) {
	bare := map[int]*compareResult{}
	for i := range results {
		r := &results[i]
		if r.ServerCPU > 0 {
			r.PerCore = r.Result.RPS / r.ServerCPU
		}
		if r.Target == string(target.Bare) {
			bare[r.Round] = r
		}
	}
	for i := range results {
		r := &results[i]
		b := bare[r.Round]
		if b == nil {
			continue
		}
		if b.Result.RPS > 0 {
			r.Ratio = r.Result.RPS / b.Result.RPS
		}
		if b.PerCore > 0 {
			r.PerCoreRatio = r.PerCore / b.PerCore
		}
	}
}

// spread is the median and range of one figure over rounds.
type spread struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

func spreadOf(xs []float64) spread {
	if len(xs) == 0 {
		return spread{}
	}
	slices.Sort(xs)
	m := xs[len(xs)/2]
	if len(xs)%2 == 0 {
		m = (xs[len(xs)/2-1] + xs[len(xs)/2]) / 2
	}
	return spread{Median: m, Min: xs[0], Max: xs[len(xs)-1]}
}

// targetSummary is one target over every round.
type targetSummary struct {
	Target       string `json:"target"`
	Rounds       int    `json:"rounds"`
	RPS          spread `json:"rps"`
	Ratio        spread `json:"ratio_to_bare"`
	PerCoreRatio spread `json:"per_core_ratio_to_bare"`
	ServerUS     spread `json:"server_cpu_us_per_request"`
	RedisUS      spread `json:"redis_cpu_us_per_request"`
	P99          spread `json:"p99_ns"`
	Errors       int64  `json:"errors"`
}

func summarize(results []compareResult, kinds []target.Kind) []targetSummary {
	var out []targetSummary
	for _, k := range kinds {
		if slices.ContainsFunc(out, func(s targetSummary) bool { return s.Target == string(k) }) {
			continue
		}
		var rps, ratio, pc, sus, rus, p99 []float64
		s := targetSummary{Target: string(k)}
		for _, r := range results {
			if r.Target != string(k) {
				continue
			}
			s.Rounds++
			s.Errors += r.Result.Errors()
			rps = append(rps, r.Result.RPS)
			ratio = append(ratio, r.Ratio)
			pc = append(pc, r.PerCoreRatio)
			sus = append(sus, r.ServerUS)
			rus = append(rus, r.RedisUS)
			p99 = append(p99, float64(r.Result.P99))
		}
		s.RPS, s.Ratio, s.PerCoreRatio = spreadOf(rps), spreadOf(ratio), spreadOf(pc)
		s.ServerUS, s.RedisUS, s.P99 = spreadOf(sus), spreadOf(rus), spreadOf(p99)
		out = append(out, s)
	}
	return out
}

// compareOne launches one target, warms it up, measures it and stops it.
func compareOne(ctx context.Context, k target.Kind, cfg target.Config, wo wrk.Options, warmup, duration time.Duration, prof *profiler) (res compareResult, err error) {
	run, err := target.Launch(ctx, k, cfg)
	if err != nil {
		return res, err
	}
	defer func() {
		if serr := run.Stop(); serr != nil && err == nil {
			err = serr
		}
	}()
	wo.URL = run.CommandURL
	if warmup > 0 {
		wo.Duration = warmup
		if _, err := wrk.Run(ctx, wo); err != nil {
			return res, fmt.Errorf("warm up: %w", err)
		}
	}
	before := usage(pids(run.Servers)...)
	redisBefore := usage(redisOf(run)...)
	t0 := time.Now()
	wo.Duration = duration
	profDone := make(chan error, 1)
	if prof != nil {
		go func() { profDone <- prof.take(ctx, run.CommandURL, duration-time.Second) }()
	}
	r, err := wrk.Run(ctx, wo)
	if err != nil {
		return res, err
	}
	if prof != nil {
		if err := <-profDone; err != nil {
			return res, err
		}
	}
	elapsed := time.Since(t0)
	after := usage(pids(run.Servers)...)
	redisAfter := usage(redisOf(run)...)
	res = compareResult{Target: string(k), Result: r,
		ServerCPU: (after.CPU - before.CPU).Seconds() / elapsed.Seconds(), ServerRSS: after.RSS}
	if r.Requests > 0 {
		res.ServerUS = float64((after.CPU - before.CPU).Microseconds()) / float64(r.Requests)
		res.RedisUS = float64((redisAfter.CPU - redisBefore.CPU).Microseconds()) / float64(r.Requests)
	}
	return res, nil
}

// redisOf lists the pid of the target's redis-server, if it has one.
func redisOf(run *target.Running) []int {
	if run.Redis == nil {
		return nil
	}
	return []int{run.Redis.PID()}
}

// pids lists the processes' ids.
func pids(ps []*proc.Process) []int {
	out := make([]int, len(ps))
	for i, p := range ps {
		out[i] = p.PID()
	}
	return out
}

// usage sums CPU and RSS over processes (missing ones count zero).
func usage(pids ...int) proc.Usage {
	var u proc.Usage
	for _, pid := range pids {
		if x, err := proc.ReadUsage(pid); err == nil {
			u.CPU += x.CPU
			u.RSS += x.RSS
		}
	}
	return u
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%dµs", d.Microseconds())
	}
}

// profiler fetches a CPU profile from keepwatch's /debug/pprof (enabled by
// --admin-token).
type profiler struct {
	token string
	path  string
}

func (p *profiler) take(ctx context.Context, base string, d time.Duration) error {
	secs := max(int(d/time.Second), 1)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", base, secs), nil)
	if err != nil {
		return fmt.Errorf("profile keepwatch: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+p.token)
	resp, err := (&http.Client{Timeout: d + 30*time.Second}).Do(req)
	if err != nil {
		return fmt.Errorf("profile keepwatch: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("profile keepwatch: status %d", resp.StatusCode)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("read keepwatch profile: %w", err)
	}
	if err := os.WriteFile(p.path, b, 0o644); err != nil {
		return fmt.Errorf("write keepwatch profile: %w", err)
	}
	return nil
}
