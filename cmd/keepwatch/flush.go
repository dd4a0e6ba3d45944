package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/oklog/run"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/keepwatch/keepwatch/command/flush"
	"github.com/keepwatch/keepwatch/storage/mongo"
	"github.com/keepwatch/keepwatch/storage/redisbuf"
)

// flushConfig holds the --flush-* flags, shared by `keepwatch command`
// (in-process flusher) and `keepwatch flush`.
type flushConfig struct {
	flush.Config
	chunk int
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
}

// startFlusher builds the flusher of a process; the caller runs it with Run
// and closes store after Run returns.
func startFlusher(ctx context.Context, env *environment, cfg *flushConfig, buf *redisbuf.Buffer, store *mongo.Store, reg prometheus.Registerer) (*flush.Flusher, error) {
	if cfg.chunk < 1 || cfg.Batch < 1 || cfg.Parallelism < 1 || cfg.Interval <= 0 {
		return nil, usageError{"--flush-chunk, --flush-batch, --flush-parallelism and --flush-interval must be positive"}
	}
	fl, err := flush.New(buf, store.WithWriteChunk(cfg.chunk), cfg.Config, env.logger.With("component", "flush"), reg)
	if err != nil {
		return nil, usageError{err.Error()}
	}
	env.logger.Info("flusher configured", "interval", cfg.Interval, "batch", cfg.Batch,
		"parallelism", cfg.Parallelism, "lease", cfg.Lease, "chunk", cfg.chunk)
	return fl, nil
}

// flushCmdConfig is every flag of `keepwatch flush`.
type flushCmdConfig struct {
	httpAddr      string
	shutdownGrace time.Duration
	redis         redisConfig
	mongo         mongoConfig
	flush         flushConfig
}

func (c *flushCmdConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.httpAddr, "http-addr", ":8082", "address of /healthz, /readyz and /metrics")
	fs.DurationVar(&c.shutdownGrace, "shutdown-grace", 15*time.Second, "time the current batch gets to finish on SIGTERM")
	c.redis.register(fs)
	c.mongo.register(fs)
	c.flush.register(fs)
}

// runFlush runs the flusher alone, for deployments that scale it apart from
// the command API: it serves /healthz, /readyz and /metrics and flushes until
// SIGTERM, then finishes the batches under way.
func runFlush(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet(env, "flush", "Flush the Redis buffer to MongoDB (alone; `keepwatch command` also does it by default).")
	var cfg flushCmdConfig
	cfg.register(fs)
	if err := parseFlags(env, fs, args); err != nil {
		return err
	}
	log := env.logger.With("service", "flush")
	client, buf, err := cfg.redis.open(ctx)
	if err != nil {
		return err
	}
	defer client.Close()
	store, err := cfg.mongo.open(ctx, env, "keepwatch-flush", true)
	if err != nil {
		return err
	}
	defer func() { _ = store.Close(context.WithoutCancel(ctx)) }()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	fl, err := startFlusher(ctx, env, &cfg.flush, buf, store, reg)
	if err != nil {
		return err
	}
	ready := promauto.With(reg).NewGauge(prometheus.GaugeOpts{Name: "keepwatch_ready", ConstLabels: prometheus.Labels{"service": "flush"}, Help: "1 when the service is ready to work."})
	reg.MustRegister(buf.BacklogCollector(cfg.redis.timeout, log))

	var stopping atomic.Bool
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		rctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		err := errors.Join(buf.Ping(rctx), store.Ping(rctx))
		if stopping.Load() {
			err = errors.New("stopping")
		}
		if err != nil {
			ready.Set(0)
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		ready.Set(1)
		_, _ = w.Write([]byte("ready\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	ln, err := net.Listen("tcp", cfg.httpAddr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.httpAddr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	ready.Set(1)
	log.Info("listening", "addr", ln.Addr().String(), "shards", buf.Shards())

	var g run.Group
	// Flusher: on interrupt it finishes the batches under way.
	fctx, fcancel := context.WithCancel(context.WithoutCancel(ctx))
	flushDone := make(chan struct{})
	g.Add(func() error {
		defer close(flushDone)
		return fl.Run(fctx)
	}, func(error) {
		stopping.Store(true)
		ready.Set(0)
		fcancel()
	})
	// HTTP: stays up until the flusher has stopped, so /readyz says 503
	// and /metrics shows the last batch.
	g.Add(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}, func(error) {
		select {
		case <-flushDone:
		case <-time.After(cfg.shutdownGrace):
		}
		sctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownGrace)
		defer cancel()
		_ = srv.Shutdown(sctx)
	})
	addSignal(&g, ctx, log)
	return g.Run()
}
