package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"time"

	"github.com/oklog/run"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepwatch/keepwatch/command/flush"
	"github.com/keepwatch/keepwatch/internal/edge"
	"github.com/keepwatch/keepwatch/storage/mongo"
	"github.com/keepwatch/keepwatch/storage/redisbuf"
)

// flushConfig holds the --flush-* flags, shared by `keepwatch command`
// (in-process flusher) and `keepwatch flush`.
type flushConfig struct {
	flush.Config
	chunk     int
	retention time.Duration
	sweep     flush.SweepConfig
}

// register adds the --flush-* flags.
func (c *flushConfig) register(fs *flag.FlagSet) {
	d := flush.DefaultConfig()
	fs.DurationVar(&c.Interval, "flush-interval", d.Interval,
		"time between two drains of the buffer to MongoDB (an entry waits about this long)")
	fs.IntVar(&c.Batch, "flush-batch", d.Batch, "most entries claimed and written at once")
	fs.IntVar(&c.Parallelism, "flush-parallelism", d.Parallelism, "shards flushed at once")
	fs.DurationVar(&c.Lease, "flush-lease", d.Lease,
		"how long a claimed batch is hidden from other flushers unless renewed; renewed every third while it is written, so a killed flusher's batch comes back within about this long")
	fs.IntVar(&c.chunk, "flush-chunk", mongo.DefaultWriteChunk,
		"statements per MongoDB bulk write (FerretDB hangs on ~100)")
	fs.IntVar(&c.MaxRetries, "flush-max-retries", d.MaxRetries, "retries of a failing batch within one claim")
	fs.DurationVar(&c.MaxBackoff, "flush-max-backoff", d.MaxBackoff, "longest wait between two retries")
	fs.IntVar(&c.DeadLetterAfter, "flush-dead-letter-after", d.DeadLetterAfter,
		"failed attempts after which a batch goes to dead letters: writes MongoDB refused, and claims whose flusher died (MongoDB being unreachable never counts)")
	fs.DurationVar(&c.retention, "retention", 365*24*time.Hour,
		"how long after its newest event a progress document (an erase's tombstone too) may be removed; keep it at least --keep-watching-max-age (0: never)")
	fs.DurationVar(&c.sweep.Interval, "retention-sweep-interval", time.Hour,
		"time between two sweeps of documents past --retention (MongoDB's TTL index removes them too; FerretDB has none; 0: no sweep)")
	fs.IntVar(&c.sweep.Batch, "retention-sweep-batch", 1000, "most documents one delete of the retention sweep touches")
	fs.IntVar(&c.sweep.MaxPerSweep, "retention-sweep-max", 100_000, "most documents one retention sweep deletes; the rest waits for the next")
}

// flusherParts are what a process runs to flush: the flusher and the
// retention sweep.
type flusherParts struct {
	flusher *flush.Flusher
	sweeper *flush.Sweeper
}

// run runs both until ctx ends.
func (p flusherParts) run(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = p.sweeper.Run(ctx)
	}()
	err := p.flusher.Run(ctx)
	<-done
	return err
}

// startFlusher builds the flusher of a process and its retention sweep; the
// caller runs them with run and closes store after run returns.
func startFlusher(env *environment, cfg *flushConfig, buf *redisbuf.Buffer, store *mongo.Store, reg prometheus.Registerer) (flusherParts, error) {
	if cfg.chunk < 1 || cfg.Batch < 1 || cfg.Parallelism < 1 || cfg.Interval <= 0 {
		return flusherParts{}, usageError{"--flush-chunk, --flush-batch, --flush-parallelism and --flush-interval must be positive"}
	}
	if cfg.retention < 0 {
		return flusherParts{}, usageError{"--retention must not be negative"}
	}
	writer := store.WithWriteChunk(cfg.chunk).WithRetention(cfg.retention)
	fl, err := flush.New(buf, writer, cfg.Config, env.logger.With("component", "flush"), reg)
	if err != nil {
		return flusherParts{}, usageError{err.Error()}
	}
	sweep := cfg.sweep
	if cfg.retention == 0 {
		sweep.Interval = 0
	}
	sw, err := flush.NewSweeper(writer, sweep, env.logger.With("component", "retention"), reg)
	if err != nil {
		return flusherParts{}, usageError{err.Error()}
	}
	env.logger.Info("flusher configured", "interval", cfg.Interval, "batch", cfg.Batch,
		"parallelism", cfg.Parallelism, "lease", cfg.Lease, "chunk", cfg.chunk,
		"retention", cfg.retention, "retention_sweep_interval", sweep.Interval)
	return flusherParts{flusher: fl, sweeper: sw}, nil
}

// flushEdge is the HTTP edge of `keepwatch flush`: probes and scrapes only.
func flushEdge() edge.Config {
	return edge.Config{
		ReadTimeout: 5 * time.Second, IdleTimeout: 2 * time.Minute,
		MaxConns: 256, MaxHeaderBytes: 4 << 10, BodyLimit: 4 << 10,
		Grace: 15 * time.Second,
	}
}

// flushCmdConfig is every flag of `keepwatch flush`.
type flushCmdConfig struct {
	http  httpConfig
	redis redisConfig
	mongo mongoConfig
	flush flushConfig
}

func (c *flushCmdConfig) register(fs *flag.FlagSet) {
	c.http.register(fs, ":8082", flushEdge())
	fs.Lookup("shutdown-grace").Usage = "time the batches under way get to finish on SIGTERM; /readyz says 503 and /metrics stays up meanwhile"
	c.redis.register(fs)
	c.redis.registerStart(fs)
	c.mongo.register(fs)
	c.flush.register(fs)
}

// serveFlush runs the flusher alone, for deployments that scale it apart
// from the command API. It serves /healthz, /readyz and /metrics and flushes
// until SIGTERM, then finishes the batches under way, /readyz saying 503 and
// /metrics showing the last batch until they are written.
func serveFlush(ctx context.Context, env *environment, g *run.Group, args []string) (err error) {
	fs := newFlagSet(env, "flush", "Flush the Redis buffer to MongoDB (alone; `keepwatch command` also does it by default).")
	var cfg flushCmdConfig
	cfg.register(fs)
	if err := parseFlags(env, fs, args); err != nil {
		return err
	}
	log := env.logger.With("service", "flush")
	ecfg := cfg.http.edge
	ecfg.Files = fileBudget(cfg.redis.files()+cfg.mongo.files(), 1)
	if err := ecfg.Validate(); err != nil {
		return usageError{err.Error()}
	}

	var u undo
	defer u.onError(&err)
	client, buf, err := cfg.redis.open(ctx, log)
	if err != nil {
		return err
	}
	u.add(func() { _ = client.Close() })
	store, err := cfg.mongo.open(ctx, env, "keepwatch-flush", true)
	if err != nil {
		return err
	}
	u.add(func() { _ = store.Close(context.WithoutCancel(ctx)) })
	reg := env.registerer("flush")
	fl, err := startFlusher(env, &cfg.flush, buf, store, reg)
	if err != nil {
		return err
	}
	ready := func(ctx context.Context) error { return errors.Join(buf.Ping(ctx), store.Ping(ctx)) }
	shell, err := edge.New(ecfg, edge.Deps{Ready: ready, Registerer: reg, Gatherer: env.reg, Logger: log})
	if err != nil {
		return usageError{err.Error()}
	}
	reg.MustRegister(buf.BacklogCollector(cfg.redis.timeout, log))
	ln, err := net.Listen("tcp", cfg.http.addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.http.addr, err)
	}
	log.Info("listening", "addr", ln.Addr().String(), "shards", buf.Shards())

	// Redis and MongoDB close when the flusher and the server are done.
	release := lastOut(2, func() {
		_ = store.Close(context.WithoutCancel(ctx))
		_ = client.Close()
	})
	// Flusher: on interrupt it finishes the batches under way.
	fctx, fcancel := context.WithCancel(context.WithoutCancel(ctx))
	flushDone := make(chan struct{})
	g.Add(func() error {
		defer release()
		defer close(flushDone)
		return fl.run(fctx)
	}, func(error) {
		shell.Drain()
		fcancel()
	})
	// HTTP stays up until the flusher has stopped.
	shell.AddTo(g, ln, edge.Stopping{Wait: flushDone, Stopped: release})
	return nil
}
