package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keepwatch/keepwatch/storage/redisbuf"
)

// redisConfig holds the Redis flags shared by command, flush and query.
type redisConfig struct {
	url       string
	cluster   bool
	shards    int
	highWater int64
	timeout   time.Duration
	poolSize  int
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

// registerHighWater adds --buffer-high-water, for the command side that
// enforces it.
func (c *redisConfig) registerHighWater(fs *flag.FlagSet) {
	fs.Int64Var(&c.highWater, "buffer-high-water", 1_000_000,
		"most pending entries in the buffer; above it writes get 503 (0: unlimited)")
}

// open connects and checks that Redis answers and that its buffered entries
// were written with this --redis-shards.
func (c *redisConfig) open(ctx context.Context) (redis.UniversalClient, *redisbuf.Buffer, error) {
	client, buf, err := c.dial()
	if err != nil {
		return nil, nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	if err := buf.Ping(pctx); err != nil {
		_ = client.Close()
		return nil, nil, fmt.Errorf("connect to redis: %w", err)
	}
	if err := buf.CheckShards(pctx); err != nil {
		_ = client.Close()
		return nil, nil, err
	}
	return client, buf, nil
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
