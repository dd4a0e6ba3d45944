// Package target starts the servers a benchmark compares — keepwatch and its
// baselines — each pinned to its own core, and stops them afterwards.
package target

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/keepwatch/keepwatch/bench/proc"
	"github.com/keepwatch/keepwatch/internal/freeport"
)

// Kind names a server under test.
type Kind string

// The kinds a benchmark can run.
const (
	// Bare is Fiber answering 202 with no work: the ceiling.
	Bare Kind = "bare"
	// Keepwatch is `keepwatch command` (flusher off) on its own redis-server,
	// plus `keepwatch query` when the binary has it.
	Keepwatch Kind = "keepwatch"
	// KeepwatchDev is `keepwatch dev`: command, flusher and query in one
	// process on an embedded MongoDB-protocol server.
	KeepwatchDev Kind = "keepwatch-dev"
	// NaiveRedis is the hand-written service: one synchronous Redis script
	// call per request.
	NaiveRedis Kind = "naive-redis"
	// NaiveMongo is one synchronous MongoDB upsert per request; it needs a
	// real MongoDB URI.
	NaiveMongo Kind = "naive-mongo"
)

// A kind may carry options after a colon, so that one run can compare
// variants side by side: "keepwatch:aof=always" (the Redis persistence of
// this target: no, everysec or always) and "naive-redis:pool=64" (the naive
// server's Redis connection pool).

// Base is the kind without its options.
func (k Kind) Base() Kind {
	b, _, _ := strings.Cut(string(k), ":")
	return Kind(b)
}

// Option returns the value of one option of k ("" when not given).
func (k Kind) Option(name string) string {
	_, opts, _ := strings.Cut(string(k), ":")
	for _, o := range strings.Split(opts, ",") {
		if v, ok := strings.CutPrefix(o, name+"="); ok {
			return v
		}
	}
	return ""
}

// Flags are a keepwatch target's options other than aof, as command-line
// flags: "keepwatch:commit-workers=1" runs `keepwatch command
// --commit-workers=1`, so one run can compare settings side by side.
func (k Kind) Flags() []string {
	if k.Base() != Keepwatch {
		return nil
	}
	_, opts, _ := strings.Cut(string(k), ":")
	var out []string
	for _, o := range strings.Split(opts, ",") {
		if name, _, _ := strings.Cut(o, "="); o != "" && name != "aof" && name != "bin" {
			out = append(out, "--"+o)
		}
	}
	return out
}

// ParseKinds splits a comma-separated list of kinds. Options go after a
// colon and are separated by "+": "keepwatch:aof=always",
// "naive-redis:pool=64+aof=no".
func ParseKinds(s string) ([]Kind, error) {
	var out []Kind
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		base, opts, _ := strings.Cut(f, ":")
		k := Kind(base)
		if opts != "" {
			k = Kind(base + ":" + strings.ReplaceAll(opts, "+", ","))
		}
		switch k.Base() {
		case Bare, Keepwatch, KeepwatchDev, NaiveRedis, NaiveMongo:
		default:
			return nil, fmt.Errorf("unknown target %q (want bare, keepwatch, keepwatch-dev, naive-redis, naive-mongo)", base)
		}
		for _, o := range strings.Split(strings.ReplaceAll(opts, "+", ","), ",") {
			name, v, _ := strings.Cut(o, "=")
			switch {
			case o == "":
			case name == "aof" && (v == "no" || v == "everysec" || v == "always"):
			case name == "pool" && k.Base() == NaiveRedis && v != "" && strings.Trim(v, "0123456789") == "":
			case k.Base() == Keepwatch && name == "bin" && v != "":
				// Another keepwatch binary: a build before a change, to
				// measure before and after in one run.
			case k.Base() == Keepwatch && name != "aof" && name != "" && strings.Trim(name, "abcdefghijklmnopqrstuvwxyz-") == "":
				// Any other option of a keepwatch target is one of its
				// flags: keepwatch:commit-workers=1.
			default:
				return nil, fmt.Errorf("target %q: unknown option %q (aof=no|everysec|always; pool=N for naive-redis; any --flag=value of keepwatch command for keepwatch)", f, o)
			}
		}
		out = append(out, k)
	}
	return out, nil
}

// Config is what every launch needs.
type Config struct {
	// Self is this benchmark's own executable; it serves the baselines
	// (`kwbench serve`).
	Self string
	// Keepwatch is the keepwatch binary.
	Keepwatch string
	// Dir holds logs and data of the run.
	Dir string
	// Secret signs the tokens; every server is given it.
	Secret string
	// ServerCore pins each server to a core (GOMAXPROCS=1); -1 leaves them free.
	ServerCore int
	// RedisCore pins each redis-server; -1 leaves it free.
	RedisCore int
	// MongoURI is a real MongoDB for naive-mongo.
	MongoURI string
	// KeepwatchArgs are added to `keepwatch command`'s arguments.
	KeepwatchArgs []string
	// DevArgs are added to `keepwatch dev`'s arguments.
	DevArgs []string
	// Query starts `keepwatch query` beside `keepwatch command` (it needs a
	// MongoDB: MongoURI).
	Query bool
	// RedisAOF is the persistence of the targets' redis-servers unless a
	// target's own aof option says otherwise: "no", "everysec" or "always".
	RedisAOF string
}

// Running is a launched target.
type Running struct {
	Kind Kind
	// CommandURL takes POST /v1/progress; QueryURL serves GET (empty when the
	// target has no query side).
	CommandURL string
	QueryURL   string
	// RedisURL is the target's Redis (empty when it has none).
	RedisURL string
	// Servers are the processes whose CPU and memory the report shows.
	Servers []*proc.Process
	// Redis is the target's redis-server, whose CPU the report shows per
	// request (nil when it has none).
	Redis *proc.Redis
	procs []stopper // everything started, in start order
}

// stopper is a started process: a server or its redis-server.
type stopper interface {
	Stop(grace time.Duration) error
}

// Stop stops every process, newest first, and returns the first error.
func (r *Running) Stop() error {
	var errs []error
	for i := len(r.procs) - 1; i >= 0; i-- {
		errs = append(errs, r.procs[i].Stop(10*time.Second))
	}
	return errors.Join(errs...)
}

// Launch starts kind and waits until it is ready. On error it stops whatever
// it started.
func Launch(ctx context.Context, kind Kind, c Config) (r *Running, err error) {
	r = &Running{Kind: kind}
	started := r
	defer func() {
		if err != nil {
			_ = started.Stop()
			r = nil
		}
	}()
	dir := filepath.Join(c.Dir, strings.NewReplacer(":", "_", ",", "_", "=", "-").Replace(string(kind)))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	startRedis := func() error {
		aof := kind.Option("aof")
		if aof == "" {
			aof = c.RedisAOF
		}
		rd, err := proc.StartRedis(ctx, "redis", dir, c.RedisCore, aof)
		if err != nil {
			return err
		}
		r.procs = append(r.procs, rd)
		r.Redis = rd
		r.RedisURL = rd.URL()
		return nil
	}
	server := func(name, path string, args, env []string) (string, error) {
		addr, err := freeport.Addr()
		if err != nil {
			return "", err
		}
		args = append(args, "--http-addr", addr)
		if c.ServerCore >= 0 {
			// One core, one P: the server gets exactly the core it is pinned to.
			env = append(env, "GOMAXPROCS=1")
		}
		p, err := proc.Start(proc.Spec{Name: name, Path: path, Args: args, Env: env, Core: c.ServerCore, LogDir: dir})
		if err != nil {
			return "", err
		}
		r.procs = append(r.procs, p)
		r.Servers = append(r.Servers, p)
		url := "http://" + addr
		if err := proc.WaitHTTP(ctx, p, url+"/readyz", 60*time.Second); err != nil {
			return "", fmt.Errorf("%s: %w (log: %s)", name, err, filepath.Join(dir, name+".log"))
		}
		return url, nil
	}
	switch kind.Base() {
	case Bare:
		r.CommandURL, err = server("bare", c.Self, []string{"serve", "--kind", "bare"}, nil)
		return r, err
	case NaiveRedis:
		if err := startRedis(); err != nil {
			return r, err
		}
		args := []string{"serve", "--kind", "naive-redis", "--redis-url", r.RedisURL, "--auth-secret", c.Secret}
		if pool := kind.Option("pool"); pool != "" {
			args = append(args, "--redis-pool-size", pool)
		}
		r.CommandURL, err = server("naive-redis", c.Self, args, nil)
		r.QueryURL = r.CommandURL
		return r, err
	case NaiveMongo:
		if c.MongoURI == "" {
			return r, errors.New("naive-mongo needs a real MongoDB: pass its URI")
		}
		r.CommandURL, err = server("naive-mongo", c.Self, []string{"serve", "--kind", "naive-mongo",
			"--mongo-uri", c.MongoURI, "--auth-secret", c.Secret}, nil)
		r.QueryURL = r.CommandURL
		return r, err
	case Keepwatch:
		if err := startRedis(); err != nil {
			return r, err
		}
		args := []string{"command", "--redis-url", r.RedisURL, "--auth-secret", c.Secret, "--flush=false"}
		args = append(args, c.KeepwatchArgs...)
		args = append(args, kind.Flags()...)
		bin := c.Keepwatch
		if b := kind.Option("bin"); b != "" {
			bin = b
		}
		r.CommandURL, err = server("keepwatch-command", bin, args, nil)
		if err != nil || !c.Query {
			return r, err
		}
		qargs := []string{"query", "--redis-url", r.RedisURL, "--auth-secret", c.Secret}
		if c.MongoURI != "" {
			qargs = append(qargs, "--mongo-uri", c.MongoURI)
		}
		r.QueryURL, err = server("keepwatch-query", c.Keepwatch, qargs, nil)
		return r, err
	case KeepwatchDev:
		return r, launchDev(ctx, r, c, dir)
	}
	return r, fmt.Errorf("unknown target %q", kind)
}

// launchDev starts `keepwatch dev`, waits for both its APIs, and reads the
// address of the redis-server it started from what it prints (for Redis
// INFO). It is never pinned: its redis-server, embedded MongoDB and flusher
// would inherit the one core and starve the API (measured: at 3,000 req/s
// pinned to one core, flush never finished and the schedule fell behind).
func launchDev(ctx context.Context, r *Running, c Config, dir string) error {
	caddr, err := freeport.Addr()
	if err != nil {
		return err
	}
	qaddr, err := freeport.Addr()
	if err != nil {
		return err
	}
	args := []string{"dev", "--data-dir", filepath.Join(dir, "data"), "--command-addr", caddr, "--query-addr", qaddr,
		"--auth-secret", c.Secret}
	p, err := proc.Start(proc.Spec{Name: "keepwatch-dev", Path: c.Keepwatch, Args: append(args, c.DevArgs...),
		Core: -1, LogDir: dir})
	if err != nil {
		return err
	}
	r.procs = append(r.procs, p)
	r.Servers = append(r.Servers, p)
	r.CommandURL, r.QueryURL = "http://"+caddr, "http://"+qaddr
	logPath := filepath.Join(dir, "keepwatch-dev.log")
	for _, u := range []string{r.CommandURL, r.QueryURL} {
		if err := proc.WaitHTTP(ctx, p, u+"/readyz", 120*time.Second); err != nil {
			return fmt.Errorf("keepwatch dev: %w (log: %s)", err, logPath)
		}
	}
	// The banner is printed once both APIs listen; give it a moment to land.
	for range 50 {
		if b, err := os.ReadFile(logPath); err == nil {
			if m := devRedis.FindSubmatch(b); m != nil {
				r.RedisURL = "redis://" + string(m[1]) + "/0"
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil // no Redis figures, the rest still works
}

// devRedis finds the redis-server address in keepwatch dev's banner.
var devRedis = regexp.MustCompile(`redis-server \(pid \d+\) on ([0-9.]+:\d+)`)

// BuildKeepwatch builds ./cmd/keepwatch of the module in moduleDir into dir.
func BuildKeepwatch(ctx context.Context, moduleDir, dir string) (string, error) {
	// Not "keepwatch": that is the keepwatch target's own directory in dir.
	out := filepath.Join(dir, "bin", "keepwatch")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/keepwatch")
	cmd.Dir = moduleDir
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/keepwatch: %w: %s", err, b)
	}
	return out, nil
}
