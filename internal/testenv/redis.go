// Package testenv starts the real servers keepwatch's tests talk to: a
// redis-server (single or a 3-master cluster) on free local ports, and a
// MongoDB-protocol server. Nothing here is a mock.
package testenv

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/keepwatch/keepwatch/internal/freeport"
	"github.com/keepwatch/keepwatch/internal/redisserver"
	"github.com/redis/go-redis/v9"
)

// Redis is a redis-server child process owned by one test.
type Redis struct {
	t    testing.TB
	Port int
	Addr string
	srv  *redisserver.Server
}

// URL is the redis:// URL of the server.
func (r *Redis) URL() string { return "redis://" + r.Addr + "/0" }

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	p, err := freeport.Port()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// StartRedis starts a redis-server on a free port, with AOF off and no RDB
// snapshots, and stops it when the test ends. Extra arguments are passed to
// redis-server as "--name value" pairs. It fails the test, naming the fix,
// when redis-server is not installed.
func StartRedis(t testing.TB, extra ...string) *Redis {
	t.Helper()
	return StartRedisEnv(t, nil, extra...)
}

// StartRedisEnv is StartRedis with variables added to the server's
// environment (a locale, for one).
func StartRedisEnv(t testing.TB, env []string, extra ...string) *Redis {
	t.Helper()
	srv, err := redisserver.Start(context.Background(), redisserver.Options{Dir: t.TempDir(), Core: -1, Args: extra, Env: env})
	if err != nil {
		t.Fatalf("testenv: %v (.ci/run installs redis-server)", err)
	}
	r := &Redis{t: t, Port: srv.Port, Addr: srv.Addr, srv: srv}
	t.Cleanup(r.Stop)
	return r
}

// Start restarts the server on its port after Stop; it returns once the
// server answers PING. It is a no-op while the server runs.
func (r *Redis) Start() {
	r.t.Helper()
	if !r.srv.Exited() {
		return
	}
	if err := r.srv.Restart(context.Background()); err != nil {
		r.t.Fatalf("testenv: %v", err)
	}
}

// Stop kills the server (it is a test server: no shutdown save).
func (r *Redis) Stop() { r.srv.Kill() }

// Client returns a client for the server, closed when the test ends.
func (r *Redis) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: r.Addr})
	r.t.Cleanup(func() { _ = c.Close() })
	return c
}

// RedisCluster is a 3-master Redis Cluster of redis-server children.
type RedisCluster struct {
	Nodes []*Redis
}

// Addrs lists the nodes' addresses.
func (c *RedisCluster) Addrs() []string {
	a := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		a[i] = n.Addr
	}
	return a
}

// URL is a redis:// URL naming every node, for redis.ParseClusterURL.
func (c *RedisCluster) URL() string {
	u := "redis://" + c.Nodes[0].Addr
	for i, n := range c.Nodes[1:] {
		sep := "?"
		if i > 0 {
			sep = "&"
		}
		u += sep + "addr=" + n.Addr
	}
	return u
}

// StartRedisCluster starts three cluster-enabled masters and joins them with
// redis-cli --cluster create. Without redis-cli or a redis-server built with
// cluster mode it fails the test, naming the fix: the cluster contract is
// part of what the tests prove, and a skip would hide that it did not run.
func StartRedisCluster(t testing.TB) *RedisCluster {
	t.Helper()
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Fatal("redis-cli is not on PATH, and it is what joins the three nodes into a cluster: install Debian's redis-tools (.ci/run does)")
	}
	c := &RedisCluster{}
	for i := 0; i < 3; i++ {
		n := StartRedis(t, "--cluster-enabled", "yes", "--cluster-config-file", fmt.Sprintf("nodes-%d.conf", i),
			"--cluster-node-timeout", "5000")
		c.Nodes = append(c.Nodes, n)
	}
	args := []string{"--cluster", "create"}
	args = append(args, c.Addrs()...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	out, err := exec.Command(cli, args...).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "cluster support disabled") || strings.Contains(string(out), "unknown command") {
			t.Fatalf("this redis-server was built without cluster mode, so the cluster contract suite cannot run: use Debian's redis-server (.ci/run installs it): %s", out)
		}
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	// Wait until every node reports the cluster as ok.
	deadline := time.Now().Add(20 * time.Second)
	for _, n := range c.Nodes {
		cl := redis.NewClient(&redis.Options{Addr: n.Addr})
		for {
			info, err := cl.ClusterInfo(context.Background()).Result()
			if err == nil && strings.Contains(info, "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				_ = cl.Close()
				t.Fatalf("cluster did not become ok: %v %s", err, info)
			}
			time.Sleep(50 * time.Millisecond)
		}
		_ = cl.Close()
	}
	return c
}
