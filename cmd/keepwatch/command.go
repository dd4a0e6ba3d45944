package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"sync/atomic"

	"github.com/oklog/run"

	"github.com/keepwatch/keepwatch/command"
	"github.com/keepwatch/keepwatch/internal/edge"
)

// commandConfig is every flag of `keepwatch command`.
type commandConfig struct {
	http    httpConfig
	api     apiConfig
	cmd     command.Config
	flushOn bool
	redis   redisConfig
	mongo   mongoConfig
	flush   flushConfig
}

func (c *commandConfig) register(fs *flag.FlagSet) {
	d, e := command.DefaultConfig(), command.DefaultEdge()
	c.cmd = d
	c.http.register(fs, ":8080", e)
	c.api.register(fs)
	fs.BoolVar(&c.flushOn, "flush", true, "run the flusher in this process (needs MongoDB)")
	fs.IntVar(&c.http.edge.BodyLimit, "body-limit", e.BodyLimit, "largest request body in bytes (413 above)")
	fs.Float64Var(&c.http.edge.Rate.Limit, "rate-limit", e.Rate.Limit, "requests per second per user, sustained (0: no limit); a player posts every 10 s")
	fs.IntVar(&c.http.edge.Rate.Burst, "rate-burst", e.Rate.Burst, "requests a user may send at once above the rate")
	fs.IntVar(&c.http.edge.Rate.Users, "rate-users", e.Rate.Users, "users the rate limiter tracks at most (memory bound)")
	fs.IntVar(&c.cmd.BatchMaxEvents, "batch-max-events", d.BatchMaxEvents, "most events in one POST /v1/progress/batch")
	fs.IntVar(&c.cmd.MaxJSONDepth, "max-json-depth", d.MaxJSONDepth, fmt.Sprintf("deepest nesting of objects and arrays in a body (400 deeper; from 3 to %d)", command.MaxJSONDepth))
	fs.DurationVar(&c.cmd.MaxEventAge, "max-event-age", d.MaxEventAge, "largest age (sent_at - ts) an event may claim")
	fs.DurationVar(&c.cmd.Commit.Window, "commit-window", d.Commit.Window, "group commit: wait this long for more requests (0: send when the queue is empty; below 1ms it rounds up to about 1ms when the process is idle)")
	fs.IntVar(&c.cmd.Commit.MaxBatch, "commit-batch", d.Commit.MaxBatch, "group commit: most requests per Redis round trip")
	fs.IntVar(&c.cmd.Commit.Workers, "commit-workers", d.Commit.Workers, "group commit: Redis round trips in flight at once (2 measured best on a single Redis: a batch forms while the other is in flight)")
	fs.IntVar(&c.cmd.Commit.Queue, "commit-queue", d.Commit.Queue, "group commit: most requests waiting (503 above)")
	c.redis.register(fs)
	c.redis.registerStart(fs)
	c.redis.registerHighWater(fs)
	c.mongo.register(fs)
	c.flush.register(fs)
}

// files estimates the descriptors the process needs besides client
// connections: the Redis pool, and MongoDB's with the in-process flusher.
func (c *commandConfig) files() int {
	n := c.redis.files()
	if c.flushOn {
		n += c.mongo.files()
	}
	return n
}

// serveCommand serves the command API and, unless --flush=false, the flusher.
func serveCommand(ctx context.Context, env *environment, g *run.Group, args []string) error {
	fs := newFlagSet(env, "command", "Serve the command API (POST /v1/progress) and, by default, flush the buffer to MongoDB.")
	var cfg commandConfig
	cfg.register(fs)
	if err := parseFlags(env, fs, args); err != nil {
		return err
	}
	return addCommand(ctx, env, g, &cfg, "keepwatch-command", fileBudget(cfg.files(), 1))
}

// addCommand adds the command service (and the flusher) to g; `keepwatch dev`
// reuses it. It listens before returning, so a bad address fails at once, and
// on an error it releases what it had set up.
func addCommand(ctx context.Context, env *environment, g *run.Group, cfg *commandConfig, appName string, files edge.FileBudget) (err error) {
	log := env.logger.With("service", "command")
	ecfg, verifier, err := cfg.api.shell(&cfg.http, files)
	if err != nil {
		return err
	}
	ccfg := cfg.cmd
	ccfg.Commit.Timeout = cfg.redis.timeout
	ccfg.HighWater = cfg.redis.highWater
	if err := ccfg.Validate(); err != nil {
		return usageError{err.Error()}
	}

	var u undo
	defer u.onError(&err)
	client, buf, err := cfg.redis.open(ctx, log)
	if err != nil {
		return err
	}
	u.add(func() { _ = client.Close() })
	reg := env.registerer("command")
	reg.MustRegister(verifier.Collectors()...)
	reg.MustRegister(buf.BacklogCollector(cfg.redis.timeout, log))
	shell, err := edge.New(ecfg, edge.Deps{Verifier: verifier, Ready: buf.Ping, Registerer: reg, Gatherer: env.reg, Logger: log})
	if err != nil {
		return usageError{err.Error()}
	}
	svc, err := command.New(ccfg, shell, buf, reg, log)
	if err != nil {
		return usageError{err.Error()}
	}
	u.add(svc.Close)

	// The Redis client closes when the last of its users stops: the server
	// (its last requests) and the flusher (its last batch).
	users := 1
	if cfg.flushOn {
		users++
	}
	closeRedis := lastOut(users, func() { _ = client.Close() })
	if cfg.flushOn {
		store, err := cfg.mongo.open(ctx, env, appName, true)
		if err != nil {
			return fmt.Errorf("the in-process flusher needs MongoDB (--mongo-uri); with --flush=false this service only buffers and `keepwatch flush` runs elsewhere: %w", err)
		}
		u.add(func() { _ = store.Close(context.WithoutCancel(ctx)) })
		fl, err := startFlusher(env, &cfg.flush, buf, store, reg)
		if err != nil {
			return err
		}
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		g.Add(func() error {
			defer closeRedis()
			defer func() { _ = store.Close(context.WithoutCancel(ctx)) }()
			return fl.run(fctx)
		}, func(error) { cancel() })
	}

	ln, err := net.Listen("tcp", cfg.http.addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.http.addr, err)
	}
	log.Info("listening", "addr", ln.Addr().String(), "flush", cfg.flushOn, "shards", buf.Shards(), "high_water", cfg.redis.highWater)
	shell.AddTo(g, ln, edge.Stopping{Stopped: func() {
		svc.Close() // after the server: every request in flight has its answer
		closeRedis()
	}})
	return nil
}

// lastOut returns a function that runs release when it has been called n
// times: a resource shared by n actors is released by the last to stop.
func lastOut(n int, release func()) func() {
	var left atomic.Int32
	left.Store(int32(n))
	return func() {
		if left.Add(-1) == 0 {
			release()
		}
	}
}
