package redisbuf_test

import (
	"context"
	"strings"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/keepwatch/keepwatch/internal/testenv"
	"github.com/keepwatch/keepwatch/storage/redisbuf"
)

// TestCollationCheck: a Redis whose scripts compare strings by a locale's
// collation would break ties between states unlike MongoDB, so the check
// refuses it and names the fix; Redis in the C locale, a cluster and the
// embedded server pass.
func TestCollationCheck(t *testing.T) {
	ctx := context.Background()
	check := func(c redis.UniversalClient) error {
		buf, err := redisbuf.New(c, redisbuf.Options{Shards: 4})
		if err != nil {
			t.Fatal(err)
		}
		return buf.CheckCollation(ctx)
	}
	t.Run("C locale", func(t *testing.T) {
		if err := check(testenv.StartRedisEnv(t, []string{"LC_ALL=C"}).Client()); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("en_US.UTF-8", func(t *testing.T) {
		err := check(testenv.StartRedisEnv(t, testenv.Locale(t, "en_US")).Client())
		if err == nil || !strings.Contains(err.Error(), "LC_ALL=C") {
			t.Fatalf("check against a redis-server under en_US.UTF-8: %v, want an error naming LC_ALL=C", err)
		}
	})
	t.Run("cluster", func(t *testing.T) {
		cl := testenv.StartRedisCluster(t)
		c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs()})
		defer c.Close()
		if err := check(c); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("embedded", func(t *testing.T) {
		m := miniredis.RunT(t)
		c := redis.NewClient(&redis.Options{Addr: m.Addr()})
		defer c.Close()
		if err := check(c); err != nil {
			t.Fatal(err)
		}
	})
}
