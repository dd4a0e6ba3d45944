package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"time"

	"github.com/oklog/run"
	"github.com/redis/go-redis/v9"

	"github.com/keepwatch/keepwatch/internal/edge"
	"github.com/keepwatch/keepwatch/query"
	"github.com/keepwatch/keepwatch/storage/mongo"
)

// queryConfig is every flag of `keepwatch query`.
type queryConfig struct {
	http           httpConfig
	api            apiConfig
	rules          rulesConfig
	exportTimeout  time.Duration
	readPreference string
	maxStaleness   time.Duration
	overlay        bool
	overlayTimeout time.Duration
	redis          redisConfig
	mongo          mongoConfig
}

func (c *queryConfig) register(fs *flag.FlagSet) {
	e := query.DefaultEdge()
	c.http.register(fs, ":8081", e)
	c.api.register(fs)
	fs.Float64Var(&c.http.edge.Rate.Limit, "rate-limit", e.Rate.Limit,
		"requests per second per user, sustained (0: no limit); with --rate-burst sized for a frontend: a page load (keep-watching plus a progress lookup per row of thumbnails, or one GET per thumbnail of a 50-thumbnail page) fits in the burst, a user scrolling on in the rate")
	fs.IntVar(&c.http.edge.Rate.Burst, "rate-burst", e.Rate.Burst, "requests a user may send at once above the rate")
	fs.IntVar(&c.http.edge.Rate.Users, "rate-users", e.Rate.Users, "users the rate limiter tracks at most (memory bound)")
	c.rules.register(fs)
	fs.DurationVar(&c.exportTimeout, "export-timeout", 2*time.Minute, "longest one GET /v1/export may take, from its first read to its last line (--write-timeout bounds the writing too)")
	fs.StringVar(&c.readPreference, "read-preference", "primary",
		"MongoDB members that serve reads: primary, primaryPreferred, secondary, secondaryPreferred or nearest")
	fs.DurationVar(&c.maxStaleness, "max-staleness", 0,
		"most replication lag of a secondary that serves reads (0: unset; MongoDB wants at least 90s; not with primary)")
	fs.BoolVar(&c.overlay, "overlay", true,
		"merge the user's entries still pending in Redis into answers (read-your-writes); false: MongoDB only")
	fs.DurationVar(&c.overlayTimeout, "overlay-timeout", 250*time.Millisecond,
		"longest wait for Redis per answer; past it the answer is MongoDB's alone")
	c.redis.register(fs)
	c.mongo.register(fs)
}

// files estimates the descriptors the process needs besides client
// connections: the MongoDB pool, and Redis' with the overlay.
func (c *queryConfig) files() int {
	n := c.mongo.files()
	if c.overlay {
		n += c.redis.files()
	}
	return n
}

// serveQuery serves the query API.
func serveQuery(ctx context.Context, env *environment, g *run.Group, args []string) error {
	fs := newFlagSet(env, "query", "Serve the query API (keep-watching and progress for frontends) from MongoDB and the Redis buffer.")
	var cfg queryConfig
	cfg.register(fs)
	if err := parseFlags(env, fs, args); err != nil {
		return err
	}
	return addQuery(ctx, env, g, &cfg, "keepwatch-query", fileBudget(cfg.files(), 1))
}

// addQuery adds the query service to g; `keepwatch dev` reuses it. It
// connects to MongoDB (which must be migrated, or --migrate) and listens
// before returning, so a bad address or database fails at once; on an error
// it releases what it had set up. Redis may be down: answers then come from
// MongoDB alone until it is back.
func addQuery(ctx context.Context, env *environment, g *run.Group, cfg *queryConfig, appName string, files edge.FileBudget) (err error) {
	log := env.logger.With("service", "query")
	ecfg, verifier, err := cfg.api.shell(&cfg.http, files)
	if err != nil {
		return err
	}
	readOpts := mongo.ReadOptions{ReadPreference: cfg.readPreference, MaxStaleness: cfg.maxStaleness}
	if _, err := readOpts.ReadPref(); err != nil {
		return usageError{err.Error()}
	}

	var u undo
	defer u.onError(&err)
	store, err := cfg.mongo.open(ctx, env, appName, true)
	if err != nil {
		return err
	}
	u.add(func() { _ = store.Close(context.WithoutCancel(ctx)) })
	reader, err := store.Reader(readOpts)
	if err != nil {
		return usageError{err.Error()}
	}
	var (
		client  redis.UniversalClient
		pending query.Pending
	)
	if cfg.overlay {
		c, buf, err := cfg.redis.dial()
		if err != nil {
			return err
		}
		u.add(func() { _ = c.Close() })
		client, pending = c, buf
		// Redis is optional for reads: the client reconnects by itself, and
		// until it does answers come from MongoDB alone.
		pctx, cancel := context.WithTimeout(ctx, cfg.redis.timeout)
		defer cancel()
		if err := buf.Ping(pctx); err != nil {
			log.Warn("redis unreachable: answering from mongodb alone until it answers", "err", err)
		} else if err := buf.MatchesShards(pctx); err != nil {
			// A wrong count would overlay nothing: refuse rather than serve
			// stale progress while Redis holds newer.
			return err
		}
	}

	reg := env.registerer("query")
	reg.MustRegister(verifier.Collectors()...)
	shell, err := edge.New(ecfg, edge.Deps{Verifier: verifier, Ready: store.Ping, Registerer: reg, Gatherer: env.reg, Logger: log})
	if err != nil {
		return usageError{err.Error()}
	}
	rules, err := cfg.rules.get(log)
	if err != nil {
		return err
	}
	if _, err := query.New(query.Config{
		Rules:          rules,
		MaxAge:         cfg.rules.maxAge,
		Overlay:        cfg.overlay,
		OverlayTimeout: cfg.overlayTimeout,
		ExportTimeout:  cfg.exportTimeout,
	}, shell, query.Deps{Store: reader, Export: reader, Pending: pending}, reg); err != nil {
		return usageError{err.Error()}
	}

	ln, err := net.Listen("tcp", cfg.http.addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.http.addr, err)
	}
	log.Info("listening", "addr", ln.Addr().String(), "overlay", cfg.overlay,
		"read_preference", cfg.readPreference, "finished_percent", rules.FinishedPercent, "keep_watching_max_age", cfg.rules.maxAge)
	shell.AddTo(g, ln, edge.Stopping{Stopped: func() {
		if client != nil {
			_ = client.Close()
		}
		_ = store.Close(context.Background())
	}})
	return nil
}
