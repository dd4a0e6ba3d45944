package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
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
	r := StartRedis(t, "--appendonly", "yes", "--appendfsync", "always", "--aof-use-rdb-preamble", "no")
	c := redis.NewClient(&redis.Options{Addr: r.Addr})
	ctx := context.Background()
	for i := 0; i < keys; i += 1000 {
		pipe := c.Pipeline()
		for k := i; k < min(keys, i+1000); k++ {
			pipe.Set(ctx, "load:"+strconv.Itoa(k), k, 0)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			_ = c.Close()
			t.Fatalf("fill redis: %v", err)
		}
	}
	_ = c.Close()
	r.Stop()

	r.args = append(r.args, "--key-load-delay", strconv.FormatInt(perKey.Microseconds(), 10))
	cmd := exec.Command(redisServerPath(t), r.args...)
	logf, err := os.Create(filepath.Join(r.dir, fmt.Sprintf("redis-loading-%d.log", time.Now().UnixNano())))
	if err == nil {
		cmd.Stdout, cmd.Stderr = logf, logf
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("restart redis-server: %v", err)
	}
	r.cmd = cmd
	// Wait for the first answer: LOADING, or the test would not test it.
	probe := redis.NewClient(&redis.Options{Addr: r.Addr, MaxRetries: -1})
	defer probe.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := probe.Ping(pctx).Err()
		cancel()
		switch {
		case err == nil:
			r.Stop()
			logs, _ := filepath.Glob(filepath.Join(r.dir, "redis-loading-*.log"))
			var log []byte
			if len(logs) > 0 {
				log, _ = os.ReadFile(logs[len(logs)-1])
			}
			t.Fatalf("redis-server answered before it had loaded %d keys: raise keys or perKey\n%s", keys, log)
		case strings.HasPrefix(err.Error(), "LOADING"):
			return r
		case time.Now().After(deadline):
			r.Stop()
			t.Fatalf("redis-server on %s never answered LOADING: %v", r.Addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
