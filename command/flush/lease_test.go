package flush_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keepwatch/keepwatch"
	"github.com/keepwatch/keepwatch/command/flush"
	"github.com/keepwatch/keepwatch/internal/testenv"
	"github.com/keepwatch/keepwatch/storage/mongo"
	"github.com/keepwatch/keepwatch/storage/redisbuf"
)

// TestWriteSlowerThanTheLeaseKeepsItsClaim: MongoDB is stopped for longer
// than two leases while a flusher retries its batch. The flusher renews its
// claim all along, so a second flusher draining meanwhile claims nothing of
// it; once MongoDB is back, the first flusher writes the batch.
func TestWriteSlowerThanTheLeaseKeepsItsClaim(t *testing.T) {
	ctx := context.Background()
	m := testenv.StartEmbeddedMongo(t)
	e := newEnv(t, m, mongo.Options{Timeout: 300 * time.Millisecond})
	for v := range 10 { // one user: one shard, one batch
		e.apply(keepwatch.Progress{UserID: "solo", VideoID: fmt.Sprintf("v%d", v), State: keepwatch.State{EventTime: 100, Percent: float64(v)}})
	}
	slow, slowReg := newFlusher(t, e.buf, e.store, flush.Config{
		Lease: crashLease, MaxRetries: 1000, MaxBackoff: 100 * time.Millisecond,
		DeadLetterAfter: 1, // would dead-letter at once if an outage counted
	})
	other, _ := newFlusher(t, e.buf, e.store, flush.Config{Lease: crashLease})

	m.Stop()
	type result struct {
		st  flush.Stats
		err error
	}
	done := make(chan result, 1)
	go func() {
		st, err := slow.FlushOnce(ctx)
		done <- result{st, err}
	}()
	testenv.Eventually(t, time.Minute, "the slow flusher to claim its batch", func() bool {
		return counter(t, slowReg, "keepwatch_flush_batch_size") == 1
	})
	// Six renewals, one every third of a lease: two leases in which the
	// batch would have been free for the taking without them.
	testenv.Eventually(t, time.Minute, "six renewals of the slow flusher's claim", func() bool {
		st, err := other.FlushOnce(ctx)
		if err != nil || st.Entries != 0 {
			t.Fatalf("a second flusher claimed %d entries (%v) of a batch whose claim is renewed", st.Entries, err)
		}
		return counter(t, slowReg, "keepwatch_flush_lease_renewals_total") >= 6
	})
	m.Start()
	r := <-done
	// An attempt may be applied by the restarting server after its client
	// gave up on it; the retry then finds it stale.
	if r.err != nil || r.st.Written+r.st.Stale != 10 || r.st.Lost != 0 {
		t.Fatalf("slow flusher: %+v, %v; want its 10 entries written and its claim kept", r.st, r.err)
	}
	if e.pending() != 0 {
		t.Fatalf("%d entries pending after the slow write", e.pending())
	}
	e.checkConverged()
	if lost := counter(t, slowReg, "keepwatch_flush_claims_lost_total"); lost != 0 {
		t.Fatalf("keepwatch_flush_claims_lost_total = %v", lost)
	}
	if n, err := e.store.CountDeadLetters(ctx); err != nil || n != 0 {
		t.Fatalf("%d dead letters (%v) after an outage, want none", n, err)
	}
}

// flakyBuffer is the real buffer whose renewals fail while failRenew is set,
// as they would with Redis unreachable for the flusher alone.
type flakyBuffer struct {
	*redisbuf.Buffer
	failRenew atomic.Bool
}

func (b *flakyBuffer) Renew(ctx context.Context, c *keepwatch.Claim, lease time.Duration) (int, error) {
	if b.failRenew.Load() {
		return 0, fmt.Errorf("renew claim: %w", keepwatch.ErrUnavailable)
	}
	return b.Buffer.Renew(ctx, c, lease)
}

// hungStore is the real store whose writes hang until their context ends (or
// until is closed), as with a server that accepted the connection and never
// answers.
type hungStore struct {
	*mongo.Store
	until chan struct{}
}

func (s hungStore) WriteProgress(ctx context.Context, _ []keepwatch.Progress) (keepwatch.WriteResult, error) {
	select {
	case <-ctx.Done():
		return keepwatch.WriteResult{}, fmt.Errorf("write progress: %w: %w", keepwatch.ErrUnavailable, ctx.Err())
	case <-s.until:
		return keepwatch.WriteResult{}, fmt.Errorf("write progress: %w", keepwatch.ErrUnavailable)
	case <-time.After(time.Minute):
		// Nothing stopped the write: let the test fail, not hang.
		return keepwatch.WriteResult{}, errors.New("write progress: the hung write was never stopped")
	}
}

// TestClaimNotRenewedStopsTheBatch: a flusher that cannot renew its claim
// stops writing the batch when the lease ends (another flusher may hold it
// from then on), counts the claim as lost, and leaves the entries due again,
// with no failed attempt counted; another flusher writes them.
func TestClaimNotRenewedStopsTheBatch(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil, mongo.Options{})
	e.round(1, 3, 100)
	fb := &flakyBuffer{Buffer: e.buf}
	fb.failRenew.Store(true)
	f, reg := newFlusher(t, fb, hungStore{Store: e.store}, flush.Config{Lease: crashLease, MaxRetries: 1000, DeadLetterAfter: 1})

	start := time.Now()
	st, err := f.FlushOnce(ctx)
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "claim lost") || st.Lost != 1 || st.Written != 0 {
		t.Fatalf("flush with a claim it cannot renew: %+v, %v; want the batch stopped as lost", st, err)
	}
	if errors.Is(err, keepwatch.ErrUnavailable) {
		t.Fatalf("a lost claim reads as an outage: %v", err)
	}
	// The write hung until the lease ended: not before, and not for long
	// after (a bound for a loaded machine, not a speed claim).
	if took < crashLease || took > crashLease+10*time.Second {
		t.Fatalf("the hung write was stopped after %s, want at the lease's end (%s)", took, crashLease)
	}
	if lost := counter(t, reg, "keepwatch_flush_claims_lost_total"); lost != 1 {
		t.Fatalf("keepwatch_flush_claims_lost_total = %v, want 1", lost)
	}
	if renewed := counter(t, reg, "keepwatch_flush_lease_renewals_total"); renewed != 0 {
		t.Fatalf("keepwatch_flush_lease_renewals_total = %v, want 0", renewed)
	}
	// The entries are due at once, with no attempt counted against them
	// (DeadLetterAfter is 1): another flusher writes them.
	g, _ := newFlusher(t, e.buf, e.store, flush.Config{Lease: crashLease, DeadLetterAfter: 1})
	if st, err := g.FlushOnce(ctx); err != nil || st.Written != 3 || st.DeadLettered != 0 {
		t.Fatalf("flush after the lost claim: %+v, %v; want 3 written", st, err)
	}
	e.checkConverged()
}

// TestTakeOverWaitsForLapsedLeasesOnly: a flusher wakes between its drains
// when another flusher's lease ends, to take over the batch of a flusher
// that died; a lease that was renewed gives it nothing, and entries pending
// meanwhile wait for its next drain, as coalescing wants.
func TestTakeOverWaitsForLapsedLeasesOnly(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil, mongo.Options{})
	e.round(1, 3, 100) // user-0: the held batch
	shard := e.buf.ShardOf("user-0")
	until := make(chan struct{})
	holder, holderReg := newFlusher(t, e.buf, hungStore{Store: e.store, until: until}, flush.Config{Lease: crashLease, MaxRetries: 0})
	held := make(chan error, 1)
	go func() {
		_, err := holder.FlushOnce(ctx)
		held <- err
	}()
	testenv.Eventually(t, time.Minute, "the holder to claim its batch", func() bool {
		return counter(t, holderReg, "keepwatch_flush_batch_size") == 1
	})

	// A marker in another shard tells when the flusher's first drain is done.
	marker := keepwatch.Progress{UserID: "marker", VideoID: "m", State: keepwatch.State{EventTime: 1, Percent: 1}}
	for e.buf.ShardOf(marker.UserID) == shard {
		marker.UserID += "x"
	}
	e.apply(marker)
	f, _ := newFlusher(t, e.buf, e.store, flush.Config{Interval: time.Hour, Lease: crashLease})
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- f.Run(rctx) }()
	testenv.Eventually(t, time.Minute, "the flusher's first drain", func() bool {
		_, ok := e.stored()[keepwatch.ID(marker.UserID, marker.VideoID)]
		return ok
	})
	// Fresh entries in the held batch's shard, after the drain.
	var fresh []string
	for u := 0; len(fresh) < 3; u++ {
		p := keepwatch.Progress{UserID: fmt.Sprintf("fresh-%d", u), VideoID: "v", State: keepwatch.State{EventTime: 200, Percent: 2}}
		if e.buf.ShardOf(p.UserID) == shard {
			e.apply(p)
			fresh = append(fresh, keepwatch.ID(p.UserID, p.VideoID))
		}
	}
	// Two leases and more, renewed by the holder: the flusher wakes at each
	// lease end it saw, and finds nothing lapsed.
	testenv.Eventually(t, time.Minute, "six renewals of the held claim", func() bool {
		return counter(t, holderReg, "keepwatch_flush_lease_renewals_total") >= 6
	})
	stored := e.stored()
	for _, id := range fresh {
		if _, ok := stored[id]; ok {
			t.Fatalf("%s was flushed before the next drain, by a wake-up for a lease that did not lapse", id)
		}
	}
	close(until)
	if err := <-held; err == nil || !errors.Is(err, keepwatch.ErrUnavailable) {
		t.Fatalf("holder: %v, want its write failed as unavailable", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if p := e.pending(); p != 3+int64(len(fresh)) {
		t.Fatalf("%d entries pending, want the held batch and the fresh ones (%d)", p, 3+len(fresh))
	}
}
