package testenv

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keepwatch/keepwatch/internal/redisserver"
)

// StartRedisLoading starts a redis-server that answers LOADING for a while,
// as a real one does after a restart while it reads its append-only file
// back. It writes keys into an append-only file, restarts the server with
// key-load-delay (a Redis setting for tests that makes loading pause perKey
// on each key) and returns once the server answers LOADING, so loading takes
// about keys × perKey. While loading, Redis answers clients only between
// runs of 1024 keys: keep perKey small (100µs answers every 0.1 s). Stop and
// Start work as for StartRedis.
func StartRedisLoading(t testing.TB, keys int, perKey time.Duration) *Redis {
	t.Helper()
	ctx := context.Background()
	o := redisserver.Options{Dir: t.TempDir(), Core: -1, AppendFsync: "always", Args: []string{"--aof-use-rdb-preamble", "no"}}
	srv, err := redisserver.Start(ctx, o)
	if err != nil {
		t.Fatalf("testenv: %v (.ci/run installs redis-server)", err)
	}
	c := redis.NewClient(&redis.Options{Addr: srv.Addr})
	for i := 0; i < keys; i += 1000 {
		pipe := c.Pipeline()
		for k := i; k < min(keys, i+1000); k++ {
			pipe.Set(ctx, "load:"+strconv.Itoa(k), k, 0)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			_ = c.Close()
			srv.Kill()
			t.Fatalf("fill redis: %v", err)
		}
	}
	_ = c.Close()
	srv.Kill()

	o.Port, o.ReturnWhileLoading = srv.Port, true
	o.Args = append(o.Args, "--key-load-delay", strconv.FormatInt(perKey.Microseconds(), 10))
	loading, err := redisserver.Start(ctx, o)
	if err != nil {
		t.Fatalf("testenv: restart redis-server to load %d keys: %v", keys, err)
	}
	r := &Redis{t: t, Port: loading.Port, Addr: loading.Addr, srv: loading}
	t.Cleanup(r.Stop)
	probe := redis.NewClient(&redis.Options{Addr: r.Addr, MaxRetries: -1})
	defer probe.Close()
	if err := probe.Ping(ctx).Err(); err == nil || !redis.HasErrorPrefix(err, "LOADING") {
		t.Fatalf("testenv: redis-server answered %v, not LOADING: raise keys or perKey", err)
	}
	return r
}
