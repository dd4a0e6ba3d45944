package flush_test

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/keepwatch/keepwatch"
	"github.com/keepwatch/keepwatch/command/flush"
	"github.com/keepwatch/keepwatch/storage/mongo"
	"github.com/keepwatch/keepwatch/storage/redisbuf"
)

// The crash test re-runs this test binary as a flusher process (TestMain
// sees crashChildEnv), which stops at a chosen point between claim and
// release and tells the parent, which kills it with SIGKILL.
const (
	crashChildEnv = "KEEPWATCH_TEST_CRASH_POINT"
	crashRedisEnv = "KEEPWATCH_TEST_CRASH_REDIS"
	crashURIEnv   = "KEEPWATCH_TEST_CRASH_MONGO_URI"
	crashDBEnv    = "KEEPWATCH_TEST_CRASH_MONGO_DB"
	crashShards   = 4
	crashLease    = 2 * time.Second
	reachedLine   = "REACHED"
)

// Points where the child flusher stops.
var crashPoints = []string{
	"after-claim",        // claimed, nothing written
	"mid-write",          // half of the batch written
	"after-write",        // all written, not released
	"second-batch-write", // first batch released, second written, not released
}

func TestFlusherKilledBetweenClaimAndRelease(t *testing.T) {
	for _, point := range crashPoints {
		t.Run(point, func(t *testing.T) {
			e := newEnv(t, nil, mongo.Options{})
			const t0 = 5000
			e.round(3, 6, t0)

			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(),
				crashChildEnv+"="+point, crashRedisEnv+"="+e.redis.Addr,
				crashURIEnv+"="+e.mongo.URI, crashDBEnv+"="+e.mongo.Database)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			reached := make(chan bool, 1)
			go func() {
				sc := bufio.NewScanner(out)
				for sc.Scan() {
					if sc.Text() == reachedLine {
						reached <- true
						return
					}
				}
				reached <- false
			}()
			if !<-reached {
				_ = cmd.Wait()
				t.Fatalf("child flusher ended before %s:\n%s", point, stderr.String())
			}
			// Newer events arrive for some keys while they are claimed:
			// the claimed (older) values must not win, nor hide them.
			e.round(2, 3, t0+1)
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			_ = cmd.Wait()

			// Another flusher picks up what the dead one left, once its
			// lease expires.
			f, _ := newFlusher(t, e.buf, e.store, flush.Config{Batch: 5, Lease: crashLease})
			waitFor(t, "the buffer to drain", func() bool {
				if _, err := f.FlushOnce(context.Background()); err != nil {
					t.Fatal(err)
				}
				return e.pending() == 0
			})
			e.checkConverged()
		})
	}
}

// crashChild is the flusher process of the crash test.
func crashChild() {
	point := os.Getenv(crashChildEnv)
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		os.Exit(3)
	}
	ctx := context.Background()
	client := redis.NewClient(&redis.Options{Addr: os.Getenv(crashRedisEnv)})
	buf, err := redisbuf.New(client, redisbuf.Options{Shards: crashShards})
	if err != nil {
		fail(err)
	}
	store, err := mongo.Open(ctx, mongo.Options{URI: os.Getenv(crashURIEnv), Database: os.Getenv(crashDBEnv), Timeout: 20 * time.Second})
	if err != nil {
		fail(err)
	}
	hb := &hookBuffer{Buffer: buf, point: point}
	f, err := flush.New(hb, hookStore{Store: store, point: point},
		flush.Config{Batch: 5, Parallelism: 1, Lease: crashLease}, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		fail(err)
	}
	if _, err := f.FlushOnce(ctx); err != nil {
		fail(err)
	}
	fail(fmt.Errorf("flushed everything without reaching %s", point))
}

// reach tells the parent the child is at its crash point and waits for the
// SIGKILL.
func reach() {
	fmt.Println(reachedLine)
	_ = os.Stdout.Sync()
	time.Sleep(time.Hour)
}

type hookBuffer struct {
	*redisbuf.Buffer
	point  string
	claims int
}

func (b *hookBuffer) Claim(ctx context.Context, shard, max int, lease time.Duration) (*redisbuf.Claim, error) {
	c, err := b.Buffer.Claim(ctx, shard, max, lease)
	if err == nil && len(c.Entries) > 0 {
		b.claims++
		if b.point == "after-claim" {
			reach()
		}
	}
	return c, err
}

func (b *hookBuffer) Release(ctx context.Context, c *redisbuf.Claim, done []int) error {
	if len(c.Entries) > 0 && (b.point == "after-write" || (b.point == "second-batch-write" && b.claims == 2)) {
		reach()
	}
	return b.Buffer.Release(ctx, c, done)
}

type hookStore struct {
	*mongo.Store
	point string
}

func (s hookStore) WriteProgress(ctx context.Context, ps []keepwatch.Progress) (mongo.WriteResult, error) {
	if s.point == "mid-write" {
		if _, err := s.Store.WriteProgress(ctx, ps[:len(ps)/2]); err != nil {
			return mongo.WriteResult{}, err
		}
		reach()
	}
	return s.Store.WriteProgress(ctx, ps)
}
