package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"runtime"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/redis/go-redis/v9"

	"github.com/keepwatch/keepwatch/storage/redisbuf"
)

// redisConfig holds the Redis flags shared by command, flush and query.
type redisConfig struct {
	url          string
	cluster      bool
	shards       int
	highWater    int64
	timeout      time.Duration
	startTimeout time.Duration
	poolSize     int
}

// register adds --redis-url, --redis-cluster, --redis-shards, --redis-timeout
// and --redis-pool-size.
func (c *redisConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.url, "redis-url", "redis://localhost:6379/0",
		"Redis URL; with --redis-cluster, a seed node plus ?addr=host:port for more")
	fs.BoolVar(&c.cluster, "redis-cluster", false, "connect to a Redis Cluster")
	fs.IntVar(&c.shards, "redis-shards", redisbuf.DefaultShards,
		"buffer shards (hash-tagged key groups): fewer is faster on one Redis, use 4-8 per master on a cluster; keep it fixed for a deployment's data")
	fs.DurationVar(&c.timeout, "redis-timeout", 2*time.Second, "timeout of each Redis round trip")
	fs.IntVar(&c.poolSize, "redis-pool-size", 0, "connections per Redis node (0: go-redis default, 10 per CPU)")
}

// registerStart adds --redis-start-timeout, for the services that need Redis
// to start (command and flush; the query API starts without it).
func (c *redisConfig) registerStart(fs *flag.FlagSet) {
	fs.DurationVar(&c.startTimeout, "redis-start-timeout", 45*time.Second,
		"how long to wait at start for a Redis that answers LOADING (it is reading its append-only file back after a restart; 0: do not wait); keep it within the orchestrator's startup probe (60s in deploy/k8s)")
}

// registerHighWater adds --buffer-high-water, for the command side that
// enforces it.
func (c *redisConfig) registerHighWater(fs *flag.FlagSet) {
	fs.Int64Var(&c.highWater, "buffer-high-water", 1_000_000,
		"most pending entries in the buffer; above it writes get 503 (0: unlimited)")
}

// open connects and checks that Redis answers, waiting for one that is still
// loading its data (see waitLoaded), and that its buffered entries were
// written with this --redis-shards.
func (c *redisConfig) open(ctx context.Context, log *slog.Logger) (redis.UniversalClient, *redisbuf.Buffer, error) {
	client, buf, err := c.dial()
	if err != nil {
		return nil, nil, err
	}
	if err := c.waitLoaded(ctx, buf, log); err != nil {
		_ = client.Close()
		return nil, nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	if err := buf.CheckCollation(pctx); err != nil {
		_ = client.Close()
		return nil, nil, err
	}
	if err := buf.CheckShards(pctx); err != nil {
		_ = client.Close()
		return nil, nil, err
	}
	return client, buf, nil
}

// waitLoaded pings Redis until it answers. A Redis that restarts answers
// LOADING while it reads its append-only file back, which takes minutes for
// a large one; a service that exited at once would be restarted in a loop
// until then. So LOADING is waited out with backoff, up to
// --redis-start-timeout; any other error fails at once.
func (c *redisConfig) waitLoaded(ctx context.Context, buf *redisbuf.Buffer, log *slog.Logger) error {
	var b backoff.BackOff = &backoff.StopBackOff{} // --redis-start-timeout 0: no wait
	if c.startTimeout > 0 {
		b = backoff.NewExponentialBackOff(backoff.WithInitialInterval(100*time.Millisecond),
			backoff.WithMaxInterval(2*time.Second), backoff.WithMaxElapsedTime(c.startTimeout))
	}
	loading := false
	err := backoff.Retry(func() error {
		pctx, cancel := context.WithTimeout(ctx, c.timeout)
		defer cancel()
		err := buf.Ping(pctx)
		if err == nil || !redis.HasErrorPrefix(err, "LOADING") {
			return backoff.Permanent(err)
		}
		if !loading {
			log.Info("redis is loading its data: waiting for it", "redis_start_timeout", c.startTimeout)
			loading = true
		}
		return err
	}, backoff.WithContext(b, ctx))
	switch {
	case err == nil:
		if loading {
			log.Info("redis has loaded its data")
		}
		return nil
	case loading:
		return fmt.Errorf("connect to redis: still loading its data after --redis-start-timeout %s: %w", c.startTimeout, err)
	default:
		return fmt.Errorf("connect to redis: %w", err)
	}
}

// files estimates the connections the Redis client may open: its pool
// (go-redis: 10 per CPU unless --redis-pool-size), per master on a cluster
// (three at least).
func (c *redisConfig) files() int {
	n := c.poolSize
	if n <= 0 {
		n = 10 * runtime.GOMAXPROCS(0)
	}
	if c.cluster {
		n *= 3
	}
	return n
}

// dial builds the client and the buffer without talking to Redis; the client
// connects on first use and reconnects by itself.
func (c *redisConfig) dial() (redis.UniversalClient, *redisbuf.Buffer, error) {
	var client redis.UniversalClient
	if c.cluster {
		o, err := redis.ParseClusterURL(c.url)
		if err != nil {
			return nil, nil, usageError{fmt.Sprintf("--redis-url: %v", err)}
		}
		o.ReadTimeout, o.WriteTimeout = c.timeout, c.timeout
		if c.poolSize > 0 {
			o.PoolSize = c.poolSize
		}
		client = redis.NewClusterClient(o)
	} else {
		o, err := redis.ParseURL(c.url)
		if err != nil {
			return nil, nil, usageError{fmt.Sprintf("--redis-url: %v", err)}
		}
		o.ReadTimeout, o.WriteTimeout = c.timeout, c.timeout
		if c.poolSize > 0 {
			o.PoolSize = c.poolSize
		}
		client = redis.NewClient(o)
	}
	buf, err := redisbuf.New(client, redisbuf.Options{Shards: c.shards, HighWater: c.highWater})
	if err != nil {
		_ = client.Close()
		return nil, nil, usageError{err.Error()}
	}
	return client, buf, nil
}
