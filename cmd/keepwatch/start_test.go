package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keepwatch/keepwatch/internal/testenv"
)

// TestStartWaitsForRedisLoading: a Redis that restarts answers LOADING while
// it reads its append-only file back. The services that need it used to exit
// at once; now they wait (with backoff, up to --redis-start-timeout) and
// start when it has loaded. The Redis is a real redis-server loading a real
// append-only file, slowed by its key-load-delay setting.
func TestStartWaitsForRedisLoading(t *testing.T) {
	r := testenv.StartRedisLoading(t, 30_000, 100*time.Microsecond) // about 3 s of LOADING
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done, out := startMain(t, ctx, "command", "--flush=false", "--http-addr", addr, "--redis-url", r.URL(),
		"--auth-secret", "s", "--redis-start-timeout", "1m")
	testenv.WaitHTTPUnless(t, "http://"+addr+"/readyz", http.StatusOK, 90*time.Second, func() string {
		select {
		case code := <-done:
			return fmt.Sprintf("keepwatch command exited with %d while Redis was loading:\n%s", code, out)
		default:
			return ""
		}
	})
	if !strings.Contains(out.String(), "redis is loading its data: waiting for it") {
		t.Errorf("the start did not say it waited for Redis to load:\n%s", out)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit code %d\n%s", code, out)
	}
}

// TestStartGivesUpOnRedisStillLoading: the wait is bounded; past
// --redis-start-timeout the service exits 1 and says why.
func TestStartGivesUpOnRedisStillLoading(t *testing.T) {
	r := testenv.StartRedisLoading(t, 200_000, 100*time.Microsecond) // about 20 s of LOADING
	for _, sub := range []string{"command", "flush"} {
		t.Run(sub, func(t *testing.T) {
			args := []string{sub, "--http-addr", "127.0.0.1:0", "--redis-url", r.URL(), "--redis-start-timeout", "500ms"}
			if sub == "command" {
				args = append(args, "--flush=false", "--auth-secret", "s")
			}
			done, out := startMain(t, context.Background(), args...)
			refusesToStart(t, done, out, "still loading its data after --redis-start-timeout 500ms", sub+" on a Redis loading past --redis-start-timeout")
		})
	}
}

// goroutines counts the goroutines whose stack mentions each of marks.
func goroutines(marks ...string) map[string]int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	counts := map[string]int{}
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, m := range marks {
			if strings.Contains(g, m) {
				counts[m]++
			}
		}
	}
	return counts
}

// redisClients is how many clients a redis-server has connected, besides
// probe, the client asking.
func redisClients(t *testing.T, probe *redis.Client) int {
	t.Helper()
	info, err := probe.Info(context.Background(), "clients").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "connected_clients:"); ok {
			n, _ := strconv.Atoi(v)
			return n - 1
		}
	}
	t.Fatalf("no connected_clients in %q", info)
	return 0
}

// TestFailedStartReleasesEverything guards start-up's error paths: a service
// that fails half-way (here: its port is taken, the last step) used to leave
// its MongoDB client and its group-commit workers running. Every service now
// releases what it had set up: no MongoDB monitor, commit worker or Redis
// connection of it is left once Main returns.
func TestFailedStartReleasesEverything(t *testing.T) {
	r := testenv.StartRedis(t)
	m := testenv.StartMongo(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	marks := []string{
		"mongo-driver/v2/x/mongo/driver/topology.(*Server).update", // a MongoDB client's monitor
		"keepwatch/command.(*committer).work",                      // a group-commit worker
	}
	probe := r.Client()

	// The control: a command service that starts holds each of them.
	before, clients := goroutines(marks...), redisClients(t, probe)
	ctx, cancel := context.WithCancel(context.Background())
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	done, out := startMain(t, ctx, "command", "--auth-secret", "s", "--migrate", "--http-addr", addr,
		"--redis-url", r.URL(), "--mongo-uri", m.URI, "--mongo-db", m.Database)
	waitStatus(t, "http://"+addr+"/readyz", http.StatusOK)
	running := goroutines(marks...)
	for _, mk := range marks {
		if running[mk] <= before[mk] {
			t.Fatalf("a running command service has no goroutine of %s: the check below would see no leak of it", mk)
		}
	}
	if redisClients(t, probe) <= clients {
		t.Fatal("a running command service holds no Redis connection: the check below would see no leak of one")
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit code %d\n%s", code, out)
	}

	for _, args := range [][]string{
		{"command", "--auth-secret", "s", "--migrate", "--http-addr", taken.Addr().String()},
		{"query", "--auth-secret", "s", "--migrate", "--http-addr", taken.Addr().String()},
		{"flush", "--migrate", "--http-addr", taken.Addr().String()},
		// dev's query API fails after its command API has started.
		{"dev", "--data-dir", t.TempDir(), "--command-addr", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)), "--query-addr", taken.Addr().String()},
	} {
		t.Run(args[0], func(t *testing.T) {
			before, clients := goroutines(marks...), redisClients(t, probe)
			if args[0] != "dev" {
				args = append(args, "--redis-url", r.URL(), "--mongo-uri", m.URI, "--mongo-db", m.Database)
			}
			done, out := startMain(t, context.Background(), args...)
			if code := <-done; code != 1 || !strings.Contains(out.String(), "listen on "+taken.Addr().String()) {
				t.Fatalf("exit code %d, want 1 for the taken port:\n%s", code, out)
			}
			// Connections close on the server's side a moment after the
			// client's.
			testenv.Await(t, 10*time.Second, "the failed start to release what it held", func() error {
				after, now := goroutines(marks...), redisClients(t, probe)
				leaked := now > clients
				for _, mk := range marks {
					leaked = leaked || after[mk] > before[mk]
				}
				if leaked {
					return fmt.Errorf("goroutines %v (before %v), Redis clients %d (before %d)", after, before, now, clients)
				}
				return nil
			})
		})
	}
}
