package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/oklog/run"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/keepwatch/keepwatch/api"
	"github.com/keepwatch/keepwatch/command"
)

// commandConfig is every flag of `keepwatch command`.
type commandConfig struct {
	httpAddr       string
	authSecret     string
	adminToken     string
	tokenCacheSize int
	tokens         tokenFlags
	shutdownGrace  time.Duration
	drainDelay     time.Duration
	flushOn        bool
	corsOrigins    string
	api            command.Config
	redis          redisConfig
	mongo          mongoConfig
	flush          flushConfig
}

func (c *commandConfig) register(fs *flag.FlagSet) {
	d := command.DefaultConfig()
	c.api = d
	fs.StringVar(&c.httpAddr, "http-addr", ":8080", "address of the command API")
	fs.StringVar(&c.authSecret, "auth-secret", "", "HS256 secrets, comma-separated (rotation: all verify); required")
	fs.StringVar(&c.adminToken, "admin-token", "", "bearer token for /debug/pprof (empty: pprof off)")
	fs.IntVar(&c.tokenCacheSize, "token-cache-size", 100_000, "verified tokens kept in memory (0: verify every request)")
	c.tokens.register(fs)
	fs.DurationVar(&c.shutdownGrace, "shutdown-grace", 15*time.Second, "time in-flight requests get to finish on SIGTERM")
	fs.DurationVar(&c.drainDelay, "drain-delay", 0, "time between readiness turning 503 and closing the listener on SIGTERM")
	fs.BoolVar(&c.flushOn, "flush", true, "run the flusher in this process (needs MongoDB)")
	fs.StringVar(&c.corsOrigins, "cors-origins", "",
		"browser origins allowed to call the API, comma-separated (https://app.example.com); empty: CORS off")
	fs.IntVar(&c.api.BodyLimit, "body-limit", d.BodyLimit, "largest request body in bytes (413 above)")
	fs.DurationVar(&c.api.ReadTimeout, "read-timeout", d.ReadTimeout, "longest a client may take to send one request; slower ones are disconnected")
	fs.DurationVar(&c.api.IdleTimeout, "idle-timeout", d.IdleTimeout, "how long a keep-alive connection may wait for its next request; keep it above a load balancer's idle timeout")
	fs.IntVar(&c.api.MaxConns, "max-conns", d.MaxConns, "most open client connections, each a goroutine with ~16 KiB of buffers; past it new connections get 503")
	fs.IntVar(&c.api.BatchMaxEvents, "batch-max-events", d.BatchMaxEvents, "most events in one POST /v1/progress/batch")
	fs.IntVar(&c.api.MaxJSONDepth, "max-json-depth", d.MaxJSONDepth, fmt.Sprintf("deepest nesting of objects and arrays in a body (400 deeper; from 3 to %d)", command.MaxJSONDepth))
	fs.DurationVar(&c.api.MaxEventAge, "max-event-age", d.MaxEventAge, "largest age (sent_at - ts) an event may claim")
	fs.Float64Var(&c.api.RateLimit, "rate-limit", d.RateLimit, "requests per second per user, sustained (0: no limit)")
	fs.IntVar(&c.api.RateBurst, "rate-burst", d.RateBurst, "requests a user may send at once above the rate")
	fs.IntVar(&c.api.RateUsers, "rate-users", d.RateUsers, "users the rate limiter tracks at most (memory bound)")
	fs.DurationVar(&c.api.Commit.Window, "commit-window", d.Commit.Window, "group commit: wait this long for more requests (0: send when the queue is empty; below 1ms it rounds up to about 1ms when the process is idle)")
	fs.IntVar(&c.api.Commit.MaxBatch, "commit-batch", d.Commit.MaxBatch, "group commit: most requests per Redis round trip")
	fs.IntVar(&c.api.Commit.Workers, "commit-workers", d.Commit.Workers, "group commit: Redis round trips in flight at once (2 measured best on a single Redis: a batch forms while the other is in flight)")
	fs.IntVar(&c.api.Commit.Queue, "commit-queue", d.Commit.Queue, "group commit: most requests waiting (503 above)")
	c.redis.register(fs)
	c.redis.registerHighWater(fs)
	c.mongo.register(fs)
	c.flush.register(fs)
}

// runCommand serves the command API and, unless --flush=false, the flusher.
func runCommand(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet(env, "command", "Serve the command API (POST /v1/progress) and, by default, flush the buffer to MongoDB.")
	var cfg commandConfig
	cfg.register(fs)
	if err := parseFlags(env, fs, args); err != nil {
		return err
	}
	g, err := newCommandGroup(ctx, env, &cfg, "keepwatch-command")
	if err != nil {
		return err
	}
	return g.Run()
}

// newCommandGroup wires the command service (and the flusher) into a run
// group that `keepwatch dev` reuses. It listens before returning, so a bad
// address fails at once.
func newCommandGroup(ctx context.Context, env *environment, cfg *commandConfig, appName string) (*run.Group, error) {
	log := env.logger.With("service", "command")
	verifier, err := cfg.tokens.verifier(cfg.authSecret, cfg.tokenCacheSize)
	if err != nil {
		return nil, usageError{err.Error()}
	}
	apiCfg := cfg.api
	apiCfg.Commit.Timeout = cfg.redis.timeout
	apiCfg.HighWater = cfg.redis.highWater
	apiCfg.AdminToken = cfg.adminToken
	apiCfg.OpenAPI = api.OpenAPI
	for o := range strings.SplitSeq(cfg.corsOrigins, ",") {
		if o = strings.TrimSpace(o); o != "" {
			apiCfg.CORSOrigins = append(apiCfg.CORSOrigins, o)
		}
	}
	if err := apiCfg.Validate(); err != nil {
		return nil, usageError{err.Error()}
	}
	client, buf, err := cfg.redis.open(ctx)
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(verifier.Collectors("command")...)
	reg.MustRegister(buf.BacklogCollector(cfg.redis.timeout, log))
	svc, err := command.New(apiCfg, buf, verifier, reg, reg, log)
	if err != nil {
		_ = client.Close()
		return nil, usageError{err.Error()}
	}

	var g run.Group
	if cfg.flushOn {
		store, err := cfg.mongo.open(ctx, env, appName, true)
		if err != nil {
			_ = client.Close()
			return nil, fmt.Errorf("the in-process flusher needs MongoDB (--mongo-uri); with --flush=false this service only buffers and `keepwatch flush` runs elsewhere: %w", err)
		}
		fl, err := startFlusher(ctx, env, &cfg.flush, buf, store, reg)
		if err != nil {
			_ = client.Close()
			_ = store.Close(context.WithoutCancel(ctx))
			return nil, err
		}
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		g.Add(func() error {
			defer store.Close(context.WithoutCancel(ctx))
			return fl.Run(fctx)
		}, func(error) { cancel() })
	}

	ln, err := net.Listen("tcp", cfg.httpAddr)
	if err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("listen on %s: %w", cfg.httpAddr, err)
	}
	log.Info("listening", "addr", ln.Addr().String(), "flush", cfg.flushOn, "shards", buf.Shards(), "high_water", cfg.redis.highWater)

	addHTTP(&g, svc, ln, cfg.drainDelay, cfg.shutdownGrace, log, func() { _ = client.Close() })
	addSignal(&g, ctx, log)
	return &g, nil
}
