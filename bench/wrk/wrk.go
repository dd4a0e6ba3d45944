// Package wrk drives wrk (the HTTP benchmarking tool, Debian package "wrk")
// with a Lua script that posts progress for a pool of users, and parses the
// figures the script prints. A load generator in C on its own core keeps the
// server, not the client, the bottleneck of a closed-loop throughput run.
package wrk

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

//go:embed progress.lua
var script []byte

// Options describe one wrk run.
type Options struct {
	// URL is the server's base URL (http://127.0.0.1:PORT).
	URL         string
	Connections int
	Threads     int
	Duration    time.Duration
	// Timeout is wrk's per-request timeout; a slower answer counts as an error.
	Timeout time.Duration
	// Tokens are the bearer tokens requests rotate over, one user each.
	Tokens []string
	// Videos is how many videos each user's requests spread over.
	Videos int
	// Core pins wrk to one CPU core through taskset; -1 leaves it free.
	Core int
	// Dir receives the script and the token file.
	Dir string
}

// Result is what one run measured. Latencies are wrk's (closed loop: from
// each request's send to its answer).
type Result struct {
	Requests    int64         `json:"requests"`
	Duration    time.Duration `json:"duration_ns"`
	RPS         float64       `json:"rps"`
	P50         time.Duration `json:"p50_ns"`
	P90         time.Duration `json:"p90_ns"`
	P99         time.Duration `json:"p99_ns"`
	P999        time.Duration `json:"p999_ns"`
	Max         time.Duration `json:"max_ns"`
	StatusErrs  int64         `json:"status_errors"`
	SocketErrs  int64         `json:"socket_errors"`
	TimeoutErrs int64         `json:"timeout_errors"`
}

// Errors is every failed request: answers with status above 399 and socket
// errors (connect, read, write, timeout).
func (r Result) Errors() int64 { return r.StatusErrs + r.SocketErrs + r.TimeoutErrs }

type raw struct {
	DurationUS int64   `json:"duration_us"`
	Requests   int64   `json:"requests"`
	Connect    int64   `json:"connect"`
	Read       int64   `json:"read"`
	Write      int64   `json:"write"`
	Status     int64   `json:"status"`
	Timeout    int64   `json:"timeout"`
	P50        int64   `json:"p50_us"`
	P90        int64   `json:"p90_us"`
	P99        int64   `json:"p99_us"`
	P999       int64   `json:"p999_us"`
	Max        int64   `json:"max_us"`
	Mean       float64 `json:"mean_us"`
}

// Prepare writes the script and the token file into o.Dir; Run needs them.
func Prepare(o Options) error {
	if err := os.WriteFile(filepath.Join(o.Dir, "progress.lua"), script, 0o644); err != nil {
		return fmt.Errorf("write wrk script: %w", err)
	}
	if err := os.WriteFile(filepath.Join(o.Dir, "tokens.txt"), []byte(strings.Join(o.Tokens, "\n")+"\n"), 0o600); err != nil {
		return fmt.Errorf("write token file: %w", err)
	}
	return nil
}

// Run runs wrk once and returns its figures. Prepare must have been called.
func Run(ctx context.Context, o Options) (Result, error) {
	bin, err := exec.LookPath("wrk")
	if err != nil {
		return Result{}, fmt.Errorf("wrk is not on PATH (Debian: apt-get install wrk): %w", err)
	}
	args := []string{
		"-t", strconv.Itoa(max(o.Threads, 1)), "-c", strconv.Itoa(o.Connections),
		"-d", fmt.Sprintf("%ds", max(int(o.Duration.Round(time.Second)/time.Second), 1)),
		"--timeout", fmt.Sprintf("%ds", max(int(o.Timeout.Round(time.Second)/time.Second), 1)),
		"-s", filepath.Join(o.Dir, "progress.lua"), o.URL,
		"--", filepath.Join(o.Dir, "tokens.txt"), strconv.Itoa(max(o.Videos, 1)),
	}
	if o.Core >= 0 {
		args = append([]string{"-c", strconv.Itoa(o.Core), bin}, args...)
		if bin, err = exec.LookPath("taskset"); err != nil {
			return Result{}, fmt.Errorf("pin wrk: taskset is not on PATH: %w", err)
		}
	}
	// wrk stops by itself after -d; the context bounds it anyway.
	ctx, cancel := context.WithTimeout(ctx, o.Duration+o.Timeout+30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return Result{}, fmt.Errorf("run wrk: %w: %s%s", err, stdout.String(), stderr.String())
	}
	return parse(stdout.Bytes())
}

// parse finds the KWBENCH line the script's done() prints.
func parse(out []byte) (Result, error) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "KWBENCH ")
		if !ok {
			continue
		}
		var r raw
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			return Result{}, fmt.Errorf("parse wrk figures %q: %w", line, err)
		}
		us := func(v int64) time.Duration { return time.Duration(v) * time.Microsecond }
		res := Result{
			Requests: r.Requests, Duration: us(r.DurationUS),
			P50: us(r.P50), P90: us(r.P90), P99: us(r.P99), P999: us(r.P999), Max: us(r.Max),
			StatusErrs: r.Status, SocketErrs: r.Connect + r.Read + r.Write, TimeoutErrs: r.Timeout,
		}
		if r.DurationUS > 0 {
			res.RPS = float64(r.Requests) / (float64(r.DurationUS) / 1e6)
		}
		return res, nil
	}
	return Result{}, fmt.Errorf("wrk printed no figures: %s", out)
}
