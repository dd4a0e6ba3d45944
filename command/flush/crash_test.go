package flush_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/keepwatch/keepwatch"
	"github.com/keepwatch/keepwatch/command/flush"
	"github.com/keepwatch/keepwatch/internal/testenv"
	"github.com/keepwatch/keepwatch/storage/mongo"
	"github.com/keepwatch/keepwatch/storage/redisbuf"
)

// The crash tests re-run this test binary as a flusher process (TestMain
// sees crashChildEnv), which the parent kills with SIGKILL, or which kills
// itself, at a chosen point between claim and release. The child tells the
// parent what it does on stdout, one line each: CLAIMED <ids>, RENEWED <n>,
// REACHED.
const (
	crashChildEnv = "KEEPWATCH_TEST_CRASH_CHILD"
	crashShards   = 4
	crashLease    = 2 * time.Second
	reachedLine   = "REACHED"
	claimedPrefix = "CLAIMED "
	renewedPrefix = "RENEWED "
	poisonUser    = "poison"
)

// childConfig is what the parent tells a child flusher, as JSON in
// crashChildEnv.
type childConfig struct {
	// Point is where the child stops: one of crashPoints (it then waits
	// for the SIGKILL), or "poison" (it runs, and kills itself whenever it
	// is about to write a batch holding poisonUser's entry).
	Point           string
	Redis           string
	MongoURI        string
	MongoDB         string
	Lease           time.Duration
	Interval        time.Duration
	DeadLetterAfter int
}

// Points where the child flusher stops and waits to be killed.
var crashPoints = []string{
	"after-claim",        // claimed, nothing written
	"mid-write",          // half of the batch written
	"after-write",        // all written, not released
	"second-batch-write", // first batch released, second written, not released
}

// child is a running child flusher.
type child struct {
	cmd    *exec.Cmd
	lines  chan string
	exited chan struct{}
	stderr *testenv.Output
}

func startChild(t *testing.T, cfg childConfig) *child {
	t.Helper()
	js, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+string(js))
	c := &child{cmd: cmd, lines: make(chan string, 1024), exited: make(chan struct{}), stderr: &testenv.Output{}}
	cmd.Stderr = c.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			select {
			case c.lines <- sc.Text():
			default: // nobody reads them: never block the child
			}
		}
		_ = cmd.Wait()
		close(c.exited)
	}()
	t.Cleanup(c.kill)
	return c
}

// kill sends SIGKILL and waits for the process to be gone.
func (c *child) kill() {
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.exited
}

// next returns the child's next line that starts with prefix; it fails the
// test if the child exits first or a minute passes.
func (c *child) next(t *testing.T, prefix string) string {
	t.Helper()
	timeout := time.After(time.Minute)
	for {
		select {
		case l := <-c.lines:
			if rest, ok := strings.CutPrefix(l, prefix); ok {
				return rest
			}
		case <-c.exited:
			t.Fatalf("child flusher exited (%v) before %q:\n%s", c.cmd.ProcessState, prefix, c.stderr)
		case <-timeout:
			t.Fatalf("no %q from the child flusher within a minute:\n%s", prefix, c.stderr)
		}
	}
}

func (e *env) childConfig(point string, lease time.Duration) childConfig {
	return childConfig{Point: point, Redis: e.redis.Addr, MongoURI: e.mongo.URI, MongoDB: e.mongo.Database, Lease: lease}
}

func TestFlusherKilledBetweenClaimAndRelease(t *testing.T) {
	for _, point := range crashPoints {
		t.Run(point, func(t *testing.T) {
			e := newEnv(t, nil, mongo.Options{})
			const t0 = 5000
			e.round(3, 6, t0)
			ch := startChild(t, e.childConfig(point, crashLease))
			ch.next(t, reachedLine)
			// Newer events arrive for some keys while they are claimed:
			// the claimed (older) values must not win, nor hide them.
			e.round(2, 3, t0+1)
			ch.kill()

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
			if n, err := e.store.CountDeadLetters(context.Background()); err != nil || n != 0 {
				t.Fatalf("%d dead letters (%v) after one crash, want none", n, err)
			}
		})
	}
}

// envDuration reads a duration from the environment, for measuring with
// other settings than the test's defaults.
func envDuration(t *testing.T, name string, def time.Duration) time.Duration {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return d
}

// TestKilledFlusherBatchIsFlushedWithinALease: a child flusher stops in the
// middle of writing its batch (a write slower than the lease) and keeps its
// claim by renewing it: for two leases and more nobody else can claim the
// batch. Then it is killed with SIGKILL, and another flusher, started then
// (a replica, or the same one restarted), writes the batch's newest values
// about one lease after the last renewal, without waiting for its next
// drain (its interval is an hour). It logs the recovery time (kill → the
// newest values in MongoDB); to measure it with the defaults of
// `keepwatch flush`:
//
//	KEEPWATCH_TEST_RECOVERY_LEASE=15s KEEPWATCH_TEST_RECOVERY_INTERVAL=30s \
//	  go test ./command/flush -run TestKilledFlusherBatchIsFlushedWithinALease -v
func TestKilledFlusherBatchIsFlushedWithinALease(t *testing.T) {
	lease := envDuration(t, "KEEPWATCH_TEST_RECOVERY_LEASE", crashLease)
	interval := envDuration(t, "KEEPWATCH_TEST_RECOVERY_INTERVAL", time.Hour)
	ctx := context.Background()
	e := newEnv(t, nil, mongo.Options{})
	const t0 = 5000
	e.round(3, 6, t0)
	ch := startChild(t, e.childConfig("mid-write", lease))
	claimed := strings.Split(ch.next(t, claimedPrefix), ",")
	claimedAt := time.Now()
	ch.next(t, reachedLine)
	e.round(2, 3, t0+1) // newer values, some of them for claimed keys

	// Seven renewals, one every third of a lease: more than two leases
	// have passed since the claim (six would be two leases to the
	// millisecond, measured from the child's claim, which this process
	// learns of a little later), and the batch is still the child's.
	for range 7 {
		ch.next(t, renewedPrefix)
	}
	if held := time.Since(claimedAt); held < 2*lease {
		t.Fatalf("seven renewals within %s, less than two leases of %s", held, lease)
	}
	user, _, _ := keepwatch.SplitID(claimed[0])
	shard := e.buf.ShardOf(user)
	other, err := e.buf.Claim(ctx, shard, 1000, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range other.Entries {
		if slices.Contains(claimed, keepwatch.ID(p.UserID, p.VideoID)) {
			t.Fatalf("%s was claimed again while its flusher renewed its claim", keepwatch.ID(p.UserID, p.VideoID))
		}
	}
	if err := e.buf.Release(ctx, other, nil, 0); err != nil {
		t.Fatal(err)
	}
	// The child wrote the first half of its batch before it stopped; the
	// second half has never reached MongoDB.
	stored := e.stored()
	for _, id := range claimed[len(claimed)/2:] {
		if _, ok := stored[id]; ok {
			t.Fatalf("%s is in MongoDB while its claim is held by a flusher that has not written it", id)
		}
	}

	ch.kill()
	killed := time.Now()
	// The flusher that takes over: another replica, or the same one
	// restarted.
	f, reg := newFlusher(t, e.buf, e.store, flush.Config{Interval: interval, Lease: lease, Batch: 5})
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- f.Run(rctx) }()
	waitFor(t, "the killed flusher's batch in MongoDB", func() bool { return e.converged() })
	recovery := time.Since(killed)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	e.checkConverged()
	t.Logf("recovery after SIGKILL mid-batch: %s (lease %s, flush interval %s)", recovery.Round(time.Millisecond), lease, interval)
	// A bound, not a speed claim: the lease ends at most one lease after
	// the last renewal, the flusher takes the batch over then, and the rest
	// is slack for a loaded machine.
	if limit := lease + 10*time.Second; recovery > limit {
		t.Fatalf("recovery took %s, more than lease + 10s = %s", recovery, limit)
	}
	if lost := counter(t, reg, "keepwatch_flush_claims_lost_total"); lost != 0 {
		t.Fatalf("the flusher that took over lost %v claims", lost)
	}
}

// TestCrashLoopEndsInDeadLetter: a batch that kills its flusher every time it
// is written (a poison entry, an out-of-memory kill) is dead-lettered after
// DeadLetterAfter claims, although each flusher dies before it can count
// anything, and the rest of the buffer is flushed.
func TestCrashLoopEndsInDeadLetter(t *testing.T) {
	const deadLetterAfter = 3
	ctx := context.Background()
	e := newEnv(t, nil, mongo.Options{})
	e.round(4, 5, 100)
	e.apply(keepwatch.Progress{UserID: poisonUser, VideoID: "p", State: keepwatch.State{EventTime: 100, Percent: 1}})
	cfg := e.childConfig("poison", crashLease)
	cfg.Interval, cfg.DeadLetterAfter = 200*time.Millisecond, deadLetterAfter

	deaths := 0
	for {
		ch := startChild(t, cfg)
		dead := false
		testenv.Eventually(t, 2*time.Minute, "the child flusher to die or the buffer to drain", func() bool {
			select {
			case <-ch.exited:
				dead = true
				return true
			default:
				return e.pending() == 0
			}
		})
		if !dead {
			ch.kill()
			break
		}
		if ws, ok := ch.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("child flusher ended with %v, not by its SIGKILL:\n%s", ch.cmd.ProcessState, ch.stderr)
		}
		if deaths++; deaths > deadLetterAfter {
			t.Fatalf("the flusher died %d times on one batch; want a dead letter after %d", deaths, deadLetterAfter)
		}
	}
	if deaths != deadLetterAfter {
		t.Fatalf("the flusher died %d times before the batch was dead-lettered, want %d", deaths, deadLetterAfter)
	}
	list, err := e.store.DeadLetters(ctx, 0)
	if err != nil || len(list) != 1 {
		t.Fatalf("dead letters %+v, %v; want one", list, err)
	}
	dl, err := e.store.DeadLetter(ctx, list[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if dl.Attempts != deadLetterAfter {
		t.Fatalf("dead letter has %d attempts, want %d", dl.Attempts, deadLetterAfter)
	}
	poisonShard := e.buf.ShardOf(poisonUser)
	var inDL []string
	for _, de := range dl.Entries {
		if e.buf.ShardOf(de.UserID) != poisonShard {
			t.Fatalf("dead letter holds %s/%s of shard %d; the poison batch is in shard %d", de.UserID, de.VideoID, e.buf.ShardOf(de.UserID), poisonShard)
		}
		inDL = append(inDL, keepwatch.ID(de.UserID, de.VideoID))
		// The dead letter carries the newest value of each of its keys.
		if w := e.want[keepwatch.ID(de.UserID, de.VideoID)]; de.State != w {
			t.Fatalf("dead letter has %s at %+v, want %+v", keepwatch.ID(de.UserID, de.VideoID), de.State, w)
		}
	}
	if !slices.Contains(inDL, keepwatch.ID(poisonUser, "p")) || len(inDL) > 5 {
		t.Fatalf("dead letter holds %v: want the poison batch (at most 5 entries, the poison among them)", inDL)
	}
	// Everything else is in MongoDB with its newest value.
	stored := e.stored()
	for id, w := range e.want {
		if slices.Contains(inDL, id) {
			continue
		}
		if stored[id] != w {
			t.Fatalf("%s: MongoDB has %+v, want %+v", id, stored[id], w)
		}
	}
}

// crashChild is the flusher process of the crash tests.
func crashChild() {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		os.Exit(3)
	}
	var cfg childConfig
	if err := json.Unmarshal([]byte(os.Getenv(crashChildEnv)), &cfg); err != nil {
		fail(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	client := redis.NewClient(&redis.Options{Addr: cfg.Redis})
	buf, err := redisbuf.New(client, redisbuf.Options{Shards: crashShards})
	if err != nil {
		fail(err)
	}
	store, err := mongo.Open(ctx, mongo.Options{URI: cfg.MongoURI, Database: cfg.MongoDB, Timeout: 20 * time.Second})
	if err != nil {
		fail(err)
	}
	hb := &hookBuffer{Buffer: buf, point: cfg.Point}
	f, err := flush.New(hb, hookStore{Store: store, point: cfg.Point},
		flush.Config{Batch: 5, Parallelism: 1, Lease: cfg.Lease, Interval: cfg.Interval, DeadLetterAfter: cfg.DeadLetterAfter},
		slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})), prometheus.NewRegistry())
	if err != nil {
		fail(err)
	}
	if cfg.Point == "poison" {
		if err := f.Run(ctx); err != nil {
			fail(err)
		}
		os.Exit(0)
	}
	if _, err := f.FlushOnce(ctx); err != nil {
		fail(err)
	}
	fail(fmt.Errorf("flushed everything without reaching %s", cfg.Point))
}

// reach tells the parent the child is at its crash point and waits for the
// SIGKILL. The flusher's other goroutines (the claim's renewals) go on.
func reach() {
	fmt.Println(reachedLine)
	select {}
}

type hookBuffer struct {
	*redisbuf.Buffer
	point  string
	claims int
}

func (b *hookBuffer) Claim(ctx context.Context, shard, max int, lease time.Duration) (*keepwatch.Claim, error) {
	c, err := b.Buffer.Claim(ctx, shard, max, lease)
	if err == nil && len(c.Entries) > 0 {
		b.claims++
		ids := make([]string, len(c.Entries))
		for i, p := range c.Entries {
			ids[i] = keepwatch.ID(p.UserID, p.VideoID)
		}
		fmt.Println(claimedPrefix + strings.Join(ids, ","))
		if b.point == "after-claim" {
			reach()
		}
	}
	return c, err
}

func (b *hookBuffer) Renew(ctx context.Context, c *keepwatch.Claim, lease time.Duration) (int, error) {
	n, err := b.Buffer.Renew(ctx, c, lease)
	if err == nil {
		fmt.Println(renewedPrefix + fmt.Sprint(n))
	}
	return n, err
}

func (b *hookBuffer) Release(ctx context.Context, c *keepwatch.Claim, done []int, failed int) error {
	if len(c.Entries) > 0 && (b.point == "after-write" || (b.point == "second-batch-write" && b.claims == 2)) {
		reach()
	}
	return b.Buffer.Release(ctx, c, done, failed)
}

type hookStore struct {
	*mongo.Store
	point string
}

func (s hookStore) WriteProgress(ctx context.Context, ps []keepwatch.Progress) (keepwatch.WriteResult, error) {
	switch s.point {
	case "mid-write":
		if _, err := s.Store.WriteProgress(ctx, ps[:len(ps)/2]); err != nil {
			return keepwatch.WriteResult{}, err
		}
		reach()
	case "poison":
		if slices.ContainsFunc(ps, func(p keepwatch.Progress) bool { return p.UserID == poisonUser }) {
			// As the kernel's OOM killer would: no deferred function,
			// no release.
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	}
	return s.Store.WriteProgress(ctx, ps)
}
