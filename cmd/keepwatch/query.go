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
	"github.com/redis/go-redis/v9"

	"github.com/keepwatch/keepwatch/api"
	"github.com/keepwatch/keepwatch/query"
	"github.com/keepwatch/keepwatch/storage/mongo"
)

// queryConfig is every flag of `keepwatch query`.
type queryConfig struct {
	httpAddr       string
	authSecret     string
	adminToken     string
	tokenCacheSize int
	tokens         tokenFlags
	shutdownGrace  time.Duration
	drainDelay     time.Duration
	threshold      float64
	readPreference string
	maxStaleness   time.Duration
	corsOrigins    string
	overlay        bool
	overlayTimeout time.Duration
	readTimeout    time.Duration
	writeTimeout   time.Duration
	idleTimeout    time.Duration
	maxConns       int
	redis          redisConfig
	mongo          mongoConfig
}

func (c *queryConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.httpAddr, "http-addr", ":8081", "address of the query API")
	fs.StringVar(&c.authSecret, "auth-secret", "", "HS256 secrets, comma-separated (rotation: all verify); required")
	fs.StringVar(&c.adminToken, "admin-token", "", "bearer token for /debug/pprof (empty: pprof off)")
	fs.IntVar(&c.tokenCacheSize, "token-cache-size", 100_000, "verified tokens kept in memory (0: verify every request)")
	c.tokens.register(fs)
	fs.DurationVar(&c.shutdownGrace, "shutdown-grace", 15*time.Second, "time in-flight requests get to finish on SIGTERM")
	fs.DurationVar(&c.drainDelay, "drain-delay", 0, "time between readiness turning 503 and closing the listener on SIGTERM")
	fs.Float64Var(&c.threshold, "finished-threshold", 95, "percent at or above which a video is finished and leaves keep-watching")
	fs.StringVar(&c.readPreference, "read-preference", "primary",
		"MongoDB members that serve reads: primary, primaryPreferred, secondary, secondaryPreferred or nearest")
	fs.DurationVar(&c.maxStaleness, "max-staleness", 0,
		"most replication lag of a secondary that serves reads (0: unset; MongoDB wants at least 90s; not with primary)")
	fs.StringVar(&c.corsOrigins, "cors-origins", "",
		"browser origins allowed to call the API, comma-separated (https://app.example.com); empty: CORS off")
	fs.BoolVar(&c.overlay, "overlay", true,
		"merge the user's entries still pending in Redis into answers (read-your-writes); false: MongoDB only")
	fs.DurationVar(&c.overlayTimeout, "overlay-timeout", 250*time.Millisecond,
		"longest wait for Redis per answer; past it the answer is MongoDB's alone")
	fs.DurationVar(&c.readTimeout, "read-timeout", query.DefaultReadTimeout, "longest a client may take to send one request; slower ones are disconnected")
	fs.DurationVar(&c.writeTimeout, "write-timeout", query.DefaultWriteTimeout, "longest the writing of one answer may take")
	fs.DurationVar(&c.idleTimeout, "idle-timeout", query.DefaultIdleTimeout, "how long a keep-alive connection may wait for its next request; keep it above a load balancer's idle timeout")
	fs.IntVar(&c.maxConns, "max-conns", query.DefaultMaxConns, "most open client connections, each a goroutine with ~16 KiB of buffers; past it new connections get 503")
	c.redis.register(fs)
	c.mongo.register(fs)
}

// runQuery serves the query API until SIGTERM/SIGINT.
func runQuery(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet(env, "query", "Serve the query API (keep-watching and progress for frontends) from MongoDB and the Redis buffer.")
	var cfg queryConfig
	cfg.register(fs)
	if err := parseFlags(env, fs, args); err != nil {
		return err
	}
	g, err := newQueryGroup(ctx, env, &cfg, "keepwatch-query")
	if err != nil {
		return err
	}
	return g.Run()
}

// newQueryGroup wires the query service into a run group that `keepwatch dev`
// reuses (set cfg's fields, or register them on a flag set). It connects to
// MongoDB (which must be migrated, or --migrate) and listens before
// returning, so a bad address or database fails at once; Redis may be down:
// answers then come from MongoDB alone until it is back. The group returns
// when ctx ends: readiness turns 503 first, then in-flight requests finish.
func newQueryGroup(ctx context.Context, env *environment, cfg *queryConfig, appName string) (*run.Group, error) {
	log := env.logger.With("service", "query")
	verifier, err := cfg.tokens.verifier(cfg.authSecret, cfg.tokenCacheSize)
	if err != nil {
		return nil, usageError{err.Error()}
	}
	readOpts := mongo.ReadOptions{ReadPreference: cfg.readPreference, MaxStaleness: cfg.maxStaleness}
	if _, err := readOpts.ReadPref(); err != nil {
		return nil, usageError{err.Error()}
	}
	var origins []string
	for o := range strings.SplitSeq(cfg.corsOrigins, ",") {
		if o = strings.TrimSpace(o); o != "" {
			origins = append(origins, o)
		}
	}

	store, err := cfg.mongo.open(ctx, env, appName, true)
	if err != nil {
		return nil, err
	}
	reader, err := store.Reader(readOpts)
	if err != nil {
		_ = store.Close(context.WithoutCancel(ctx))
		return nil, usageError{err.Error()}
	}
	var (
		g       run.Group
		client  redis.UniversalClient
		pending query.Pending
	)
	if cfg.overlay {
		c, buf, err := cfg.redis.dial()
		if err != nil {
			_ = store.Close(context.WithoutCancel(ctx))
			return nil, err
		}
		client, pending = c, buf
		// Redis is optional for reads: the client reconnects by itself, and
		// until it does answers come from MongoDB alone.
		pctx, cancel := context.WithTimeout(ctx, cfg.redis.timeout)
		if err := buf.Ping(pctx); err != nil {
			log.Warn("redis unreachable: answering from mongodb alone until it answers", "err", err)
		} else if err := buf.MatchesShards(pctx); err != nil {
			// A wrong count would overlay nothing: refuse rather than serve
			// stale progress while Redis holds newer.
			cancel()
			_ = c.Close()
			_ = store.Close(context.WithoutCancel(ctx))
			return nil, err
		}
		cancel()
	}
	closeRedis := func() {
		if client != nil {
			_ = client.Close()
		}
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(verifier.Collectors("query")...)
	svc, err := query.New(query.Config{
		FinishedThreshold: cfg.threshold,
		Overlay:           cfg.overlay,
		OverlayTimeout:    cfg.overlayTimeout,
		ReadTimeout:       cfg.readTimeout,
		WriteTimeout:      cfg.writeTimeout,
		IdleTimeout:       cfg.idleTimeout,
		MaxConns:          cfg.maxConns,
		CORSOrigins:       origins,
		AdminToken:        cfg.adminToken,
		OpenAPI:           api.OpenAPI,
		Registerer:        reg,
		Gatherer:          reg,
		Logger:            log,
	}, query.Deps{Store: reader, Pending: pending, Verifier: verifier, Ready: store.Ping})
	if err != nil {
		closeRedis()
		_ = store.Close(context.WithoutCancel(ctx))
		return nil, usageError{err.Error()}
	}

	ln, err := net.Listen("tcp", cfg.httpAddr)
	if err != nil {
		closeRedis()
		_ = store.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("listen on %s: %w", cfg.httpAddr, err)
	}
	log.Info("listening", "addr", ln.Addr().String(), "overlay", cfg.overlay,
		"read_preference", cfg.readPreference, "finished_threshold", cfg.threshold)

	addHTTP(&g, svc, ln, cfg.drainDelay, cfg.shutdownGrace, log, func() {
		closeRedis()
		_ = store.Close(context.Background())
	})
	addSignal(&g, ctx, log)
	return &g, nil
}
