package flush_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.mongodb.org/mongo-driver/v2/bson"
	mgo "go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/keepwatch/keepwatch"
	"github.com/keepwatch/keepwatch/command/flush"
	"github.com/keepwatch/keepwatch/internal/testenv"
	"github.com/keepwatch/keepwatch/migrations"
	"github.com/keepwatch/keepwatch/storage/mongo"
	"github.com/keepwatch/keepwatch/storage/redisbuf"
)

func TestMain(m *testing.M) {
	if os.Getenv(crashChildEnv) != "" {
		crashChild()
		return
	}
	os.Exit(m.Run())
}

// env is a Redis buffer and a migrated MongoDB database for one test.
type env struct {
	t     testing.TB
	redis *testenv.Redis
	mongo *testenv.Mongo
	buf   *redisbuf.Buffer
	store *mongo.Store
	// want is the newest state applied per key: what MongoDB must end with.
	mu   sync.Mutex
	want map[string]keepwatch.State
}

func newEnv(t testing.TB, m *testenv.Mongo, o mongo.Options) *env {
	t.Helper()
	r := testenv.StartRedis(t)
	buf, err := redisbuf.New(r.Client(), redisbuf.Options{Shards: 4})
	if err != nil {
		t.Fatal(err)
	}
	if m == nil {
		m = testenv.StartMongo(t)
	}
	o.URI, o.Database = m.URI, m.Database
	if o.Timeout == 0 {
		o.Timeout = 20 * time.Second
	}
	// Migrate with a generous timeout: a test's short one is for its
	// flushing, and a loaded machine may take longer to build an index.
	mig, err := mongo.Open(context.Background(), mongo.Options{URI: o.URI, Database: o.Database, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	err = migrations.Up(context.Background(), mig.Database(), slog.New(slog.DiscardHandler))
	_ = mig.Close(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	store, err := mongo.Open(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close(context.Background()) })
	return &env{t: t, redis: r, mongo: m, buf: buf, store: store, want: map[string]keepwatch.State{}}
}

// apply puts one state per (user, video) in the buffer, as acknowledged
// posts would, and remembers the newest.
func (e *env) apply(ps ...keepwatch.Progress) {
	e.t.Helper()
	ws := make([]keepwatch.Write, len(ps))
	for i, p := range ps {
		ws[i] = keepwatch.Write{UserID: p.UserID, Entries: []keepwatch.Entry{{VideoID: p.VideoID, State: p.State}}}
	}
	per, err := e.buf.Apply(context.Background(), ws)
	if err != nil {
		e.t.Fatalf("apply: %v", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, p := range ps {
		if per[i] != nil {
			e.t.Fatalf("apply %d: %v", i, per[i])
		}
		id := keepwatch.ID(p.UserID, p.VideoID)
		if cur, ok := e.want[id]; !ok || p.State.Newer(cur) {
			e.want[id] = p.State
		}
	}
}

// round applies a new state for each of users × videos at event time t.
func (e *env) round(users, videos int, t int64) int {
	var ps []keepwatch.Progress
	for u := range users {
		for v := range videos {
			ps = append(ps, keepwatch.Progress{
				UserID: fmt.Sprintf("user-%d", u), VideoID: fmt.Sprintf("video-%d", v),
				State: keepwatch.State{EventTime: t, Percent: float64((t + int64(v)) % 100), Position: float64(t % 5000), Duration: 5000},
			})
		}
	}
	e.apply(ps...)
	return len(ps)
}

func (e *env) pending() int64 {
	e.t.Helper()
	st, err := e.buf.Stats(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return st.Pending
}

// stored reads every progress document.
func (e *env) stored() map[string]keepwatch.State {
	e.t.Helper()
	return testenv.ProgressStates(e.t, e.store.Database())
}

// converged reports whether MongoDB holds exactly the newest state of every
// key applied.
func (e *env) converged() bool {
	e.t.Helper()
	got := e.stored()
	e.mu.Lock()
	defer e.mu.Unlock()
	return maps.Equal(got, e.want)
}

// checkConverged fails unless MongoDB holds exactly the newest state of every
// key applied.
func (e *env) checkConverged() {
	e.t.Helper()
	got := e.stored()
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(got) != len(e.want) {
		e.t.Errorf("MongoDB has %d documents, want %d", len(got), len(e.want))
	}
	bad := 0
	for id, w := range e.want {
		if g, ok := got[id]; !ok || g != w {
			if bad++; bad <= 5 {
				e.t.Errorf("%s: MongoDB has %+v (present %v), want %+v", id, g, ok, w)
			}
		}
	}
	if bad > 5 {
		e.t.Errorf("... %d keys differ in all", bad)
	}
}

func newFlusher(t testing.TB, buf flush.Buffer, store flush.Store, cfg flush.Config) (*flush.Flusher, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	f, err := flush.New(buf, store, cfg, slog.New(slog.DiscardHandler), reg)
	if err != nil {
		t.Fatal(err)
	}
	return f, reg
}

// counter reads an unlabelled counter or gauge, or the sample count of an
// unlabelled histogram.
func counter(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetHistogram() != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func TestFlushWritesNewestAndEmptiesBuffer(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil, mongo.Options{})
	// Batches smaller than a shard's backlog, so shards take several.
	f, reg := newFlusher(t, e.buf, e.store, flush.Config{Batch: 7, Parallelism: 2})
	for i := range 3 {
		e.round(6, 5, int64(1000+i))
	}
	// An out-of-order older event must not win.
	e.apply(keepwatch.Progress{UserID: "user-0", VideoID: "video-0", State: keepwatch.State{EventTime: 10, Percent: 99}})
	st, err := f.FlushOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Written != 30 || st.Entries != 30 || e.pending() != 0 {
		t.Fatalf("stats %+v, %d pending; want 30 written and none pending", st, e.pending())
	}
	e.checkConverged()

	// Newer events for half the keys: only those are written again.
	e.round(3, 5, 2000)
	st, err = f.FlushOnce(ctx)
	if err != nil || st.Written != 15 {
		t.Fatalf("second flush: %+v, %v", st, err)
	}
	e.checkConverged()
	if w := counter(t, reg, "keepwatch_flush_written_total"); w != 45 {
		t.Fatalf("keepwatch_flush_written_total = %v, want 45", w)
	}
}

// TestCoalescing shows the write amplification bound: with a post every 10 s
// and a flush every 30 s, each key gets three posts per flush and MongoDB sees
// one write, so writes per event ≤ post interval / flush interval.
func TestCoalescing(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil, mongo.Options{})
	f, reg := newFlusher(t, e.buf, e.store, flush.Config{})
	const postInterval, flushInterval = 10_000, 30_000 // ms of event time
	events := 0
	for now := int64(1_000_000); now < 1_000_000+10*flushInterval; now += postInterval {
		events += e.round(5, 4, now)
		if (now-1_000_000+postInterval)%flushInterval == 0 {
			if _, err := f.FlushOnce(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := f.FlushOnce(ctx); err != nil {
		t.Fatal(err)
	}
	e.checkConverged()
	writes := counter(t, reg, "keepwatch_flush_written_total")
	ratio := writes / float64(events)
	t.Logf("coalescing: %d events, %.0f MongoDB writes, %.3f writes per event (bound %.3f)",
		events, writes, ratio, float64(postInterval)/flushInterval)
	if ratio > float64(postInterval)/flushInterval+0.01 {
		t.Fatalf("%.3f writes per event, want ≤ %.3f", ratio, float64(postInterval)/flushInterval)
	}
}

// TestMongoStoppedNothingLostOrDeadLettered: while MongoDB is down, events
// keep coming and the flusher keeps failing; nothing is dead-lettered, and once
// MongoDB is back the buffer drains to the newest states.
func TestMongoStoppedNothingLostOrDeadLettered(t *testing.T) {
	m := testenv.StartEmbeddedMongo(t)
	e := newEnv(t, m, mongo.Options{Timeout: 300 * time.Millisecond})
	f, reg := newFlusher(t, e.buf, e.store, flush.Config{
		Interval: 50 * time.Millisecond, MaxRetries: 2, MaxBackoff: 50 * time.Millisecond,
		DeadLetterAfter: 1, // would dead-letter at once if an outage counted
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()

	tm := int64(1000)
	e.round(4, 4, tm)
	waitFor(t, "first drain", func() bool { return e.pending() == 0 })
	m.Stop()
	// Keep posting until the flusher has retried a few times against the
	// stopped server.
	for counter(t, reg, "keepwatch_flush_retried_total") < 6 {
		tm++
		e.round(4, 4, tm)
		e.round(2, 8, tm)                // new keys too
		time.Sleep(5 * time.Millisecond) // pace the posts; not a wait for anything
	}
	if e.pending() == 0 {
		t.Fatal("buffer empty while MongoDB is down")
	}
	m.Start()
	waitFor(t, "drain after restart", func() bool { return e.pending() == 0 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	e.checkConverged()
	if n, err := e.store.CountDeadLetters(context.Background()); err != nil || n != 0 {
		t.Fatalf("%d dead letters (%v), want none", n, err)
	}
	if d := counter(t, reg, "keepwatch_flush_dead_lettered_total"); d != 0 {
		t.Fatalf("keepwatch_flush_dead_lettered_total = %v", d)
	}
}

// TestRefusedDocumentDeadLetteredAlone: a document MongoDB refuses for good
// (a unique index the test adds) lands in dead letters, the rest of its batch
// is written, and after the index is dropped the replayer applies it; an older
// replayed entry never overwrites newer progress.
func TestRefusedDocumentDeadLetteredAlone(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil, mongo.Options{})
	f, reg := newFlusher(t, e.buf, e.store, flush.Config{})
	coll := e.store.Database().Collection(mongo.ProgressCollection)
	e.apply(keepwatch.Progress{UserID: "alice", VideoID: "x", State: keepwatch.State{EventTime: 1, Percent: 1}})
	if _, err := f.FlushOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := coll.Indexes().CreateOne(ctx, mgo.IndexModel{
		Keys: bson.D{{Key: "v", Value: 1}}, Options: options.Index().SetUnique(true).SetName("test_unique_v"),
	}); err != nil {
		t.Fatal(err)
	}
	bobX := keepwatch.Progress{UserID: "bob", VideoID: "x", State: keepwatch.State{EventTime: 5, Percent: 50}}
	e.apply(bobX)
	for i := range 9 { // other videos: no clash
		e.apply(keepwatch.Progress{UserID: fmt.Sprintf("user-%d", i%3), VideoID: fmt.Sprintf("video-%d", i),
			State: keepwatch.State{EventTime: 100, Percent: 10}})
	}
	st, err := f.FlushOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.DeadLettered != 1 || st.Written+st.Stale != 9 || e.pending() != 0 {
		t.Fatalf("stats %+v with %d pending; want 1 dead-lettered, 9 written, none pending", st, e.pending())
	}
	if got := e.stored(); len(got) != 10 {
		t.Fatalf("MongoDB has %d documents, want 10 (all but bob/x)", len(got))
	}
	list, err := e.store.DeadLetters(ctx, 0)
	if err != nil || len(list) != 1 || list[0].Count != 1 {
		t.Fatalf("dead letters %+v, %v", list, err)
	}
	if counter(t, reg, "keepwatch_flush_dead_lettered_total") != 1 || counter(t, reg, "keepwatch_dead_letters") != 1 {
		t.Fatal("dead-letter metrics not updated")
	}

	r := flush.NewReplayer(e.store)
	// Still refused: the dead letter stays, one attempt more.
	res, err := r.Retry(ctx, list[0].ID, nil)
	if err != nil || res.StillFailing != 1 || res.DeadLetters != 0 {
		t.Fatalf("retry before the fix: %+v, %v", res, err)
	}
	if err := coll.Indexes().DropOne(ctx, "test_unique_v"); err != nil {
		t.Fatal(err)
	}
	var reports int
	res, err = r.Retry(ctx, list[0].ID, func(done, total int, _ flush.ReplayResult) { reports++ })
	if err != nil || res.Written != 1 || res.DeadLetters != 1 || reports == 0 {
		t.Fatalf("retry after the fix: %+v, %v, %d progress reports", res, err, reports)
	}
	e.checkConverged()

	// An old batch (an earlier state of bob/x and of user-0/video-0) is
	// replayed after newer progress was written: nothing rolls back.
	old := keepwatch.DeadLetter{Error: "old", Entries: []keepwatch.DeadEntry{
		{Progress: keepwatch.Progress{UserID: "bob", VideoID: "x", State: keepwatch.State{EventTime: 4, Percent: 99}}},
		{Progress: keepwatch.Progress{UserID: "user-0", VideoID: "video-0", State: keepwatch.State{EventTime: 99, Percent: 99}}},
	}}
	if _, err := e.store.AddDeadLetter(ctx, old); err != nil {
		t.Fatal(err)
	}
	res, err = r.RetryAll(ctx, nil)
	if err != nil || res.Stale != 2 || res.Written != 0 || res.DeadLetters != 1 {
		t.Fatalf("replay of an old batch: %+v, %v", res, err)
	}
	e.checkConverged()
	if n, _ := e.store.CountDeadLetters(ctx); n != 0 {
		t.Fatalf("%d dead letters left", n)
	}
}

// refusingStore fails every batch with an error that is neither an outage nor
// a single document's fault, the way a server refusing the whole command
// would (or an outage, when unavailable is set). It wraps the real store,
// which still stores the dead letters.
type refusingStore struct {
	*mongo.Store
	unavailable bool
}

func (s refusingStore) WriteProgress(ctx context.Context, ps []keepwatch.Progress) (keepwatch.WriteResult, error) {
	if s.unavailable {
		return keepwatch.WriteResult{}, fmt.Errorf("write progress: %w", keepwatch.ErrUnavailable)
	}
	return keepwatch.WriteResult{}, errors.New("write progress: command refused")
}

// lateClaimBuffer makes the first Claim happen after its caller stopped
// listening, as a Redis client does that gives up on a command it already
// sent: Redis makes the claim, and the caller gets an error. The claim waits
// for proceed, or for its context to end.
type lateClaimBuffer struct {
	flush.Buffer
	once     sync.Once
	claiming chan struct{} // closed when the first claim is asked for
	proceed  chan struct{}
}

func (b *lateClaimBuffer) Claim(ctx context.Context, shard, max int, lease time.Duration) (*keepwatch.Claim, error) {
	first := false
	b.once.Do(func() { first = true })
	if !first {
		return b.Buffer.Claim(ctx, shard, max, lease)
	}
	close(b.claiming)
	select {
	case <-ctx.Done():
	case <-b.proceed:
	}
	c, err := b.Buffer.Claim(context.WithoutCancel(ctx), shard, max, lease)
	if err == nil && ctx.Err() != nil {
		return nil, fmt.Errorf("claim: %w", ctx.Err())
	}
	return c, err
}

// TestStoppingDrainLeavesNoClaimBehind: a drain stopped (shutdown, or an
// outage on another shard) while a claim is in flight hands back what the
// claim took, so the next flush writes it now, not a lease later.
func TestStoppingDrainLeavesNoClaimBehind(t *testing.T) {
	e := newEnv(t, nil, mongo.Options{})
	e.round(3, 2, 10)
	buf := &lateClaimBuffer{Buffer: e.buf, claiming: make(chan struct{}), proceed: make(chan struct{})}
	cfg := flush.Config{Parallelism: 1, Lease: time.Hour}
	f, _ := newFlusher(t, buf, e.store, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := f.FlushOnce(ctx)
		done <- err
	}()
	<-buf.claiming
	cancel()
	close(buf.proceed)
	<-done

	// A flusher started next (a restart, another replica) finds every
	// entry due.
	next, _ := newFlusher(t, e.buf, e.store, cfg)
	if _, err := next.FlushOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := e.pending(); n != 0 {
		t.Fatalf("%d entries still pending after the next flush: a claim made for the stopped drain holds them", n)
	}
	e.checkConverged()
}

// TestBatchFailingPastTheBoundIsDeadLettered: a batch the server refuses is
// dead-lettered after DeadLetterAfter failed attempts counted across
// flushers, while an outage, however long, counts none.
func TestBatchFailingPastTheBoundIsDeadLettered(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil, mongo.Options{})
	cfg := flush.Config{MaxRetries: 1, MaxBackoff: time.Millisecond, DeadLetterAfter: 5}

	// An outage never dead-letters, however long it lasts.
	f, _ := newFlusher(t, e.buf, refusingStore{Store: e.store, unavailable: true}, cfg)
	e.round(2, 2, 10)
	for range 4 {
		if _, err := f.FlushOnce(ctx); !errors.Is(err, keepwatch.ErrUnavailable) {
			t.Fatalf("flush during an outage: %v", err)
		}
	}
	if n, _ := e.store.CountDeadLetters(ctx); n != 0 || e.pending() != 4 {
		t.Fatalf("%d dead letters and %d pending after an outage; want 0 and 4", n, e.pending())
	}

	// Two attempts per claim: after three claims the entries reach 5. Each
	// claim is made by a new flusher, as after a restart: the count lives
	// with the entries in the buffer, not in a flusher's memory.
	var reg *prometheus.Registry
	for i := range 3 {
		f, r := newFlusher(t, e.buf, refusingStore{Store: e.store}, cfg)
		if _, err := f.FlushOnce(ctx); err == nil {
			t.Fatalf("flush %d of a refused batch succeeded", i)
		}
		reg = r
	}
	dls, err := e.store.DeadLetters(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	entries := 0
	for _, dl := range dls {
		entries += dl.Count
		if dl.Attempts < 5 {
			t.Fatalf("dead letter %+v: want at least 5 attempts", dl)
		}
	}
	if entries != 4 || e.pending() != 0 {
		t.Fatalf("%d entries dead-lettered and %d pending; want 4 and 0", entries, e.pending())
	}
	if counter(t, reg, "keepwatch_flush_dead_lettered_total") != 4 {
		t.Fatal("keepwatch_flush_dead_lettered_total not 4")
	}
	// The replayer, through the real store, applies it.
	if res, err := flush.NewReplayer(e.store).RetryAll(ctx, nil); err != nil || res.Written != 4 {
		t.Fatalf("replay: %+v, %v", res, err)
	}
	e.checkConverged()
}

func TestRunStopsAfterCurrentBatch(t *testing.T) {
	e := newEnv(t, nil, mongo.Options{})
	f, _ := newFlusher(t, e.buf, e.store, flush.Config{Interval: time.Hour})
	e.round(5, 5, 42)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	// Run drains at once; once the buffer is empty, stop it.
	waitFor(t, "first drain", func() bool { return e.pending() == 0 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	e.checkConverged()
}

// waitFor polls cond until it holds, for at most two minutes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testenv.Eventually(t, 2*time.Minute, what, cond)
}

// TestConcurrentFlushersConverge runs three flushers at once while events
// keep coming: claims keep them apart, and whatever order their writes land
// in, MongoDB ends with the newest state of every key.
func TestConcurrentFlushersConverge(t *testing.T) {
	e := newEnv(t, nil, mongo.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 3 {
		f, _ := newFlusher(t, e.buf, e.store, flush.Config{Interval: 5 * time.Millisecond, Batch: 4, Parallelism: 2})
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f.Run(ctx); err != nil {
				t.Error(err)
			}
		}()
	}
	for i := range 30 {
		e.round(4, 3, int64(100+i))
	}
	waitFor(t, "the buffer to drain", func() bool { return e.pending() == 0 })
	cancel()
	wg.Wait()
	e.checkConverged()
}
