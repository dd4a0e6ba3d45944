// Package flush moves buffered progress from the write buffer to MongoDB.
//
// A Flusher claims a batch of one shard's pending entries with a lease, writes
// it with conditional upserts that never replace a newer state, and only then
// releases exactly the entries it handled: written, found stale, or put in the
// dead-letter store. An entry updated meanwhile stays pending with its newer
// value. While a batch is being written, retries included, the flusher renews
// its lease every Lease/3, so the lease can be short (seconds) however long
// the write takes: a flusher that dies mid-batch leaves its batch for at most
// one lease, and the batch is claimed again. A flusher that finds its claim
// lost (it could not renew in time, and another flusher may hold the batch
// now) stops writing it. Several flushers (goroutines or processes) may run
// at once: claims keep them apart, and the conditional upsert keeps a late
// write from rolling anything back.
//
// Failures come in two classes. Transient ones (MongoDB unreachable, no
// primary, timeouts; errors wrapping keepwatch.ErrUnavailable) are retried
// with exponential backoff and jitter, and the batch stays in the buffer as
// long as they last: nothing is dead-lettered because MongoDB is down, and the
// buffer's high-water mark turns a long outage into 503s at the front.
// Permanent ones (a document the server refuses for good, or a batch that
// keeps failing past a bound) go to the dead-letter store, from where
// operators replay or discard them (see Replayer). The attempts that decide
// the bound are counted in the buffer, with the entries: a claim counts as one
// until it is released, so a batch whose flusher keeps dying on it (a poison
// batch, an out-of-memory kill) is dead-lettered too.
package flush

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/keepwatch/keepwatch"
)

// Buffer is what the flusher needs of the write buffer.
type Buffer interface {
	// Shards is the number of shards Claim accepts.
	Shards() int
	// Claim leases up to max due entries of a shard for lease under a new
	// token, with each entry's failures so far (see keepwatch.Claim).
	// Errors wrap keepwatch.ErrUnavailable when the buffer is unreachable.
	Claim(ctx context.Context, shard, max int, lease time.Duration) (*keepwatch.Claim, error)
	// ClaimLapsed is Claim for the entries due since a time: those of a
	// claim whose lease ended then, without what was pending before.
	ClaimLapsed(ctx context.Context, shard, max int, lease time.Duration, since time.Time) (*keepwatch.Claim, error)
	// Renew extends to now + lease the lease of c's entries still under c
	// and returns how many it renewed: fewer than len(c.Entries) means the
	// claim is lost. Errors wrap keepwatch.ErrUnavailable.
	Renew(ctx context.Context, c *keepwatch.Claim, lease time.Duration) (int, error)
	// Release removes the handled entries (indexes into c.Entries) whose
	// value is still the claimed one, records failed write attempts of the
	// others (0: none that count, which takes back the one counted at claim
	// time) and makes them due again. Errors wrap keepwatch.ErrUnavailable.
	Release(ctx context.Context, c *keepwatch.Claim, done []int, failed int) error
}

// Store is what the flusher needs of MongoDB.
type Store interface {
	// WriteProgress applies states newest-wins; documents refused for good
	// are listed in the result, and the error wraps
	// keepwatch.ErrUnavailable when MongoDB is unreachable.
	WriteProgress(ctx context.Context, entries []keepwatch.Progress) (keepwatch.WriteResult, error)
	// AddDeadLetter stores a failed batch and returns its id; the error
	// wraps keepwatch.ErrUnavailable when MongoDB is unreachable.
	AddDeadLetter(ctx context.Context, dl keepwatch.DeadLetter) (string, error)
	// CountDeadLetters feeds the keepwatch_dead_letters gauge.
	CountDeadLetters(ctx context.Context) (int64, error)
}

// Config tunes a Flusher. Zero fields take the defaults of DefaultConfig.
type Config struct {
	// Interval between two drains of the buffer. Each drain empties every
	// shard of what is due, so an entry waits at most about Interval.
	Interval time.Duration
	// Batch is the most entries claimed at once.
	Batch int
	// Parallelism is how many shards are flushed at once.
	Parallelism int
	// Lease is how long a claim hides its entries from other flushers
	// unless renewed. The flusher renews it every Lease/3 while it writes
	// the batch, so a flusher that dies leaves its batch for at most about
	// this long, however long writes take.
	Lease time.Duration
	// MaxRetries bounds the retries of one batch within one claim.
	MaxRetries int
	// MaxBackoff caps the wait between two retries.
	MaxBackoff time.Duration
	// DeadLetterAfter is how many failed attempts an entry gets before it
	// is dead-lettered: writes the server refused, and claims of it whose
	// flusher died before releasing them. MongoDB being unreachable never
	// counts.
	DeadLetterAfter int
}

// DefaultConfig returns the documented defaults of the --flush-* flags.
func DefaultConfig() Config {
	return Config{
		Interval:        30 * time.Second,
		Batch:           500,
		Parallelism:     2,
		Lease:           15 * time.Second,
		MaxRetries:      8,
		MaxBackoff:      30 * time.Second,
		DeadLetterAfter: 20,
	}
}

// MinLease is the shortest lease New accepts: renewals every third of it must
// have time for a Redis round trip or two.
const MinLease = 2 * time.Second

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Interval <= 0 {
		c.Interval = d.Interval
	}
	if c.Batch <= 0 {
		c.Batch = d.Batch
	}
	if c.Parallelism <= 0 {
		c.Parallelism = d.Parallelism
	}
	if c.Lease <= 0 {
		c.Lease = d.Lease
	}
	if c.MaxRetries < 0 {
		c.MaxRetries = d.MaxRetries
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = d.MaxBackoff
	}
	if c.DeadLetterAfter <= 0 {
		c.DeadLetterAfter = d.DeadLetterAfter
	}
	return c
}

// metrics are the flusher's Prometheus series.
type metrics struct {
	batchSize    prometheus.Histogram
	duration     prometheus.Histogram
	written      prometheus.Counter
	stale        prometheus.Counter
	retried      prometheus.Counter
	deadLettered prometheus.Counter
	deadLetters  prometheus.Gauge
	renewals     prometheus.Counter
	claimsLost   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	return &metrics{
		batchSize: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "keepwatch_flush_batch_size",
			Help:    "Entries per claimed batch.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 12),
		}),
		duration: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "keepwatch_flush_duration_seconds",
			Help:    "Time from claiming a batch to releasing it, retries included.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
		written: f.NewCounter(prometheus.CounterOpts{
			Name: "keepwatch_flush_written_total",
			Help: "Progress documents inserted or updated in MongoDB.",
		}),
		stale: f.NewCounter(prometheus.CounterOpts{
			Name: "keepwatch_flush_stale_total",
			Help: "Entries skipped because MongoDB already held the same or a newer state.",
		}),
		retried: f.NewCounter(prometheus.CounterOpts{
			Name: "keepwatch_flush_retried_total",
			Help: "Batch writes retried after a failure.",
		}),
		deadLettered: f.NewCounter(prometheus.CounterOpts{
			Name: "keepwatch_flush_dead_lettered_total",
			Help: "Entries moved to the dead-letter store.",
		}),
		deadLetters: f.NewGauge(prometheus.GaugeOpts{
			Name: "keepwatch_dead_letters",
			Help: "Batches in the dead-letter store (see keepwatch replay).",
		}),
		renewals: f.NewCounter(prometheus.CounterOpts{
			Name: "keepwatch_flush_lease_renewals_total",
			Help: "Leases of claimed batches renewed while they were being written.",
		}),
		claimsLost: f.NewCounter(prometheus.CounterOpts{
			Name: "keepwatch_flush_claims_lost_total",
			Help: "Batches this flusher stopped writing because it could not keep their claim (renewal failed until the lease ended, or another flusher took the entries over).",
		}),
	}
}

// Flusher drains the buffer into MongoDB. Run it with Run; FlushOnce drains
// once.
type Flusher struct {
	buf   Buffer
	store Store
	cfg   Config
	log   *slog.Logger
	m     *metrics

	mu sync.Mutex
	// leaseEnds holds, per shard, when the soonest lease of another
	// flusher's claim ends, as the last claim in the shard saw it: Run takes
	// the batch over then if that flusher died.
	leaseEnds map[int]time.Time
}

// New returns a flusher. Metrics are registered on reg.
func New(buf Buffer, store Store, cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Flusher, error) {
	if buf == nil || store == nil || log == nil || reg == nil {
		return nil, errors.New("new flusher: buffer, store, logger and registry are required")
	}
	cfg = cfg.withDefaults()
	if cfg.Lease < MinLease {
		return nil, fmt.Errorf("new flusher: --flush-lease %s is too short: renewing it every third needs at least %s", cfg.Lease, MinLease)
	}
	return &Flusher{buf: buf, store: store, cfg: cfg, log: log, m: newMetrics(reg), leaseEnds: map[int]time.Time{}}, nil
}

// Run drains the buffer at once and then every interval until ctx is
// cancelled. Between drains, when the lease of another flusher's claim ends
// without a release (that flusher died), it takes the batch over at once
// instead of at the next drain, so a dead flusher's batch waits about one
// lease whatever the interval. On cancellation it finishes the batches being
// written (their retries stop waiting), releases them and returns nil.
func (f *Flusher) Run(ctx context.Context) error {
	f.refreshDeadLetters(ctx)
	t := time.NewTicker(f.cfg.Interval)
	defer t.Stop()
	lapse := time.NewTimer(time.Hour)
	defer lapse.Stop()
	drain := true
	for {
		var err error
		if drain {
			_, err = f.FlushOnce(ctx)
			f.refreshDeadLetters(ctx)
		} else {
			_, err = f.takeOverLapsed(ctx)
		}
		if err != nil && ctx.Err() == nil {
			// One line per drain that stopped early; the cause is
			// counted per batch and logged there.
			f.log.Warn("flush: drain stopped early, next try at the next tick", "err", err)
		}
		lapse.Stop()
		if next, ok := f.nextLeaseEnd(); ok {
			lapse.Reset(time.Until(next))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			drain = true
		case <-lapse.C:
			drain = false
		}
	}
}

// noteLeaseEnd records what a claim in shard saw of the other claims there.
func (f *Flusher) noteLeaseEnd(shard int, end time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if end.IsZero() {
		delete(f.leaseEnds, shard)
	} else {
		f.leaseEnds[shard] = end
	}
}

// nextLeaseEnd is the soonest lease end recorded in any shard.
func (f *Flusher) nextLeaseEnd() (time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var next time.Time
	for _, end := range f.leaseEnds {
		if next.IsZero() || end.Before(next) {
			next = end
		}
	}
	return next, !next.IsZero()
}

// takeOverLapsed claims, in every shard where a recorded lease has ended,
// what became due since it ended: the batch of a flusher that died, if it
// did. A lease that was renewed meanwhile yields nothing, and its new end is
// recorded instead.
func (f *Flusher) takeOverLapsed(ctx context.Context) (Stats, error) {
	now := time.Now()
	f.mu.Lock()
	ended := make(map[int]time.Time, len(f.leaseEnds))
	for shard, end := range f.leaseEnds {
		if !end.After(now) {
			ended[shard] = end
		}
	}
	f.mu.Unlock()
	var (
		total Stats
		errs  []error
	)
	for shard, end := range ended {
		st, err := f.drainShard(ctx, shard, end)
		total.add(st)
		if err != nil {
			errs = append(errs, err)
			// Try again at the next drain, not in a loop.
			f.noteLeaseEnd(shard, time.Time{})
		}
	}
	return total, errors.Join(errs...)
}

// Stats sums what one drain did.
type Stats struct {
	Batches      int
	Entries      int
	Written      int
	Stale        int
	DeadLettered int
	// Lost counts the batches whose claim was lost while they were being
	// written; another flusher has them.
	Lost int
}

func (s *Stats) add(o Stats) {
	s.Batches += o.Batches
	s.Entries += o.Entries
	s.Written += o.Written
	s.Stale += o.Stale
	s.DeadLettered += o.DeadLettered
	s.Lost += o.Lost
}

// FlushOnce drains every shard of what is due now, Parallelism shards at a
// time, and returns what it did. A shard whose batch fails is left for the
// next drain; when the failure is an outage (Redis or MongoDB unreachable
// through a batch's retries, an error wrapping keepwatch.ErrUnavailable) the
// whole drain stops early, since every other batch would wait for it too.
func (f *Flusher) FlushOnce(ctx context.Context) (Stats, error) {
	shards := make(chan int)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		total Stats
		errs  []error
	)
	// stop ends the drain early for every worker.
	dctx, stop := context.WithCancel(ctx)
	defer stop()
	for range min(f.cfg.Parallelism, f.buf.Shards()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for shard := range shards {
				st, err := f.drainShard(dctx, shard, time.Time{})
				mu.Lock()
				total.add(st)
				if err != nil {
					errs = append(errs, err)
					if errors.Is(err, keepwatch.ErrUnavailable) {
						// An outage: the other shards would only wait
						// for it too.
						stop()
					}
				}
				mu.Unlock()
			}
		}()
	}
feed:
	for s := range f.buf.Shards() {
		select {
		case shards <- s:
		case <-dctx.Done():
			break feed
		}
	}
	close(shards)
	wg.Wait()
	return total, errors.Join(errs...)
}

// drainShard flushes batches of one shard until fewer than a full batch was
// due: every due entry, or with since set only those due since then (see
// ClaimLapsed).
func (f *Flusher) drainShard(ctx context.Context, shard int, since time.Time) (Stats, error) {
	var total Stats
	for ctx.Err() == nil {
		claimed := time.Now()
		var (
			c   *keepwatch.Claim
			err error
		)
		// The claim is not cut short when the drain stops (shutdown, or an
		// outage seen on another shard): a claim Redis made after its
		// caller stopped listening would hold its entries for a whole
		// lease. Stopping is honoured once Redis has answered, by handing
		// back what the claim took.
		cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), f.cfg.Lease/3)
		if since.IsZero() {
			c, err = f.buf.Claim(cctx, shard, f.cfg.Batch, f.cfg.Lease)
		} else {
			c, err = f.buf.ClaimLapsed(cctx, shard, f.cfg.Batch, f.cfg.Lease, since)
		}
		ccancel()
		if err != nil {
			return total, fmt.Errorf("flush shard %d: %w", shard, err)
		}
		f.noteLeaseEnd(shard, c.NextLeaseEnd)
		if len(c.Entries) == 0 {
			return total, nil
		}
		if ctx.Err() != nil {
			if err := f.buf.Release(context.WithoutCancel(ctx), c, nil, 0); err != nil {
				return total, fmt.Errorf("flush shard %d: hand back a claim after stopping: %w", shard, err)
			}
			return total, nil
		}
		st, err := f.flushBatch(ctx, c, claimed)
		total.add(st)
		if err != nil {
			return total, fmt.Errorf("flush shard %d: %w", shard, err)
		}
		if len(c.Entries) < f.cfg.Batch {
			return total, nil
		}
	}
	return total, nil
}

// errClaimLost ends the writing of a batch whose claim this flusher can no
// longer vouch for: another flusher may hold its entries now.
var errClaimLost = errors.New("claim lost")

// hold renews c's lease every Lease/3 until the returned function is called,
// which also cancels the returned context. Before that, the context is cancelled, with a cause wrapping
// errClaimLost, once the claim is found lost (another claim took entries
// over) or its lease ends without a renewal having confirmed it: from then
// on another flusher may write the entries, so this one must not. A renewal
// that fails while the lease lasts is tried again at the next third.
func (f *Flusher) hold(ctx context.Context, c *keepwatch.Claim, claimed time.Time) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		every := f.cfg.Lease / 3
		tick := time.NewTicker(every)
		defer tick.Stop()
		until := claimed.Add(f.cfg.Lease)
		end := time.NewTimer(time.Until(until))
		defer end.Stop()
		logged := false
		for {
			select {
			case <-stop:
				return
			case <-end.C:
				f.m.claimsLost.Inc()
				cancel(fmt.Errorf("%w: its lease ended at %s before a renewal could confirm it", errClaimLost, until.Format(time.RFC3339Nano)))
				return
			case <-tick.C:
			}
			at := time.Now()
			// The answer must come while the lease lasts; after it, a
			// renewal still proves the entries are ours (no other claim
			// took them), so a late one gets a third of a lease.
			deadline := until
			if !deadline.After(at) {
				deadline = at.Add(every)
			}
			rctx, rcancel := context.WithDeadline(context.Background(), deadline)
			n, err := f.buf.Renew(rctx, c, f.cfg.Lease)
			rcancel()
			switch {
			case err == nil && n == len(c.Entries):
				f.m.renewals.Inc()
				until = at.Add(f.cfg.Lease)
				end.Reset(time.Until(until))
			case err == nil:
				f.m.claimsLost.Inc()
				cancel(fmt.Errorf("%w: %d of its %d entries were claimed or released by another flusher after its lease ended",
					errClaimLost, len(c.Entries)-n, len(c.Entries)))
				return
			case !logged:
				// Once per claim: it is retried every third of a lease.
				logged = true
				f.log.Warn("flush: renew claim, retrying while the lease lasts", "shard", c.Shard,
					"entries", len(c.Entries), "lease_until", until, "err", err)
			}
		}
	}()
	var once sync.Once
	return ctx, func() {
		once.Do(func() {
			close(stop)
			<-stopped
			cancel(nil)
		})
	}
}

// flushBatch writes one claimed batch and releases what it handled. ctx only
// cuts retries short: a write under way is finished (with the store's own
// timeout), so a shutdown does not waste the work. The claim is renewed
// until the release; if it is lost, writing stops at once.
func (f *Flusher) flushBatch(ctx context.Context, c *keepwatch.Claim, claimed time.Time) (Stats, error) {
	start := time.Now()
	st := Stats{Batches: 1, Entries: len(c.Entries)}
	f.m.batchSize.Observe(float64(len(c.Entries)))
	defer func() { f.m.duration.Observe(time.Since(start).Seconds()) }()

	held, unhold := f.hold(ctx, c, claimed)
	defer unhold()
	// Retries stop waiting on shutdown or when the claim is lost.
	rctx, rcancel := context.WithCancel(ctx)
	defer rcancel()
	defer context.AfterFunc(held, rcancel)()
	// release ends the claim, renewals first: a renewal racing the release
	// would find the claim gone and report it lost.
	release := func(done []int, failed int) error {
		unhold()
		return f.buf.Release(context.WithoutCancel(ctx), c, done, failed)
	}

	// Entries that failed DeadLetterAfter times already (their last
	// flushers died with them, or could not store the dead letter) are not
	// written again: a batch that kills its flusher would kill this one.
	var done, todo []int
	var poisoned []int
	for i, fl := range c.Failures {
		if fl.Count >= f.cfg.DeadLetterAfter {
			poisoned = append(poisoned, i)
		} else {
			todo = append(todo, i)
		}
	}
	var (
		dlIDs []string
		pErr  error
	)
	if len(poisoned) > 0 {
		dl := f.deadLetter(c, poisoned, 0, fmt.Sprintf(
			"dead-lettered when claimed: %d failed attempts already, the last of them ended without a release: "+
				"a flusher stopped (killed, crashed, out of memory?) while writing this batch", c.Failures[poisoned[0]].Count))
		var id string
		if id, pErr = f.addDeadLetter(held, rctx, dl); pErr == nil {
			done = append(done, poisoned...)
			st.DeadLettered += len(poisoned)
			dlIDs = append(dlIDs, id)
		}
		// Otherwise they stay in the buffer, unwritten, for the next claim.
		f.log.Error("flush: entries that failed too often dead-lettered unwritten", "shard", c.Shard,
			"entries", len(poisoned), "attempts", c.Failures[poisoned[0]].Count, "dead_letter", dlIDs, "err", pErr)
	}
	if len(todo) == 0 {
		if err := errors.Join(pErr, release(done, 0)); err != nil {
			return st, fmt.Errorf("flush batch: %w", err)
		}
		return st, nil
	}
	entries := make([]keepwatch.Progress, len(todo))
	for j, i := range todo {
		entries[j] = c.Entries[i]
	}

	var (
		res      keepwatch.WriteResult
		lastErr  error
		attempts int
	)
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(min(200*time.Millisecond, f.cfg.MaxBackoff)),
		backoff.WithMaxInterval(f.cfg.MaxBackoff),
		// The claim is renewed for as long as the retries take:
		// MaxRetries, not the lease, bounds them.
		backoff.WithMaxElapsedTime(0),
	)
	err := backoff.RetryNotify(func() error {
		attempts++
		var err error
		res, err = f.store.WriteProgress(held, entries)
		lastErr = err
		if err != nil && held.Err() != nil {
			return backoff.Permanent(err)
		}
		return err
	}, backoff.WithContext(backoff.WithMaxRetries(b, uint64(f.cfg.MaxRetries)), rctx),
		func(error, time.Duration) { f.m.retried.Inc() })

	if err != nil {
		var derr error
		switch {
		case held.Err() != nil:
			// Another flusher may hold the batch now: stop, and leave
			// the entries to it (the release changes only what is still
			// under this claim).
			st.Lost = 1
			lastErr = context.Cause(held)
			derr = release(done, 0)
		case errors.Is(lastErr, keepwatch.ErrUnavailable) || ctx.Err() != nil:
			// MongoDB is unreachable or we are stopping: every entry
			// becomes due again at once, for the next drain or another
			// flusher, and the attempt does not count. If Redis is down
			// too, the lease will expire.
			derr = release(done, 0)
		default:
			// The server answers but refuses the batch: count the
			// attempts against its entries, dead-letter those past the
			// bound, and release the claim.
			var n int
			var id string
			n, id, derr = f.failBatch(held, rctx, c, todo, done, attempts, lastErr, release)
			st.DeadLettered += n
			if id != "" {
				dlIDs = append(dlIDs, id)
			}
		}
		level := slog.LevelWarn
		if st.DeadLettered > 0 {
			level = slog.LevelError
		}
		f.log.Log(ctx, level, "flush: batch failed", "shard", c.Shard, "entries", len(c.Entries), "attempts", attempts,
			"dead_lettered", st.DeadLettered, "dead_letter", dlIDs, "err", lastErr)
		if derr != nil {
			return st, fmt.Errorf("flush batch: %w", derr)
		}
		return st, fmt.Errorf("flush batch: %w", lastErr)
	}

	f.m.written.Add(float64(res.Written))
	f.m.stale.Add(float64(res.Stale))
	st.Written, st.Stale = res.Written, res.Stale

	refused := make(map[int]bool, len(res.Failed))
	var dlErr error
	if len(res.Failed) > 0 {
		idx := make([]int, len(res.Failed))
		for k, fe := range res.Failed {
			idx[k] = todo[fe.Index]
			refused[fe.Index] = true
		}
		dl := f.deadLetter(c, idx, attempts, res.Failed[0].Err.Error())
		for k, fe := range res.Failed {
			dl.Entries[k].Error = fe.Err.Error()
		}
		var id string
		if id, dlErr = f.addDeadLetter(held, rctx, dl); dlErr == nil {
			clear(refused)
			st.DeadLettered += len(idx)
			dlIDs = append(dlIDs, id)
		}
		// Otherwise the refused entries stay in the buffer, to be
		// written (and refused) again at the next drain.
	}
	for j, i := range todo {
		if !refused[j] {
			done = append(done, i)
		}
	}
	// If the release fails, the handled entries stay claimed until the
	// lease ends and are written again then, as stale: no harm but the work.
	err = errors.Join(dlErr, release(done, attempts))

	// One log line per batch at most.
	attrs := []any{"shard", c.Shard, "entries", len(c.Entries), "written", res.Written, "stale", res.Stale,
		"dead_lettered", st.DeadLettered, "attempts", attempts}
	switch {
	case err != nil:
		f.log.Warn("flush: batch written but not fully released", append(attrs, "err", err)...)
		return st, fmt.Errorf("flush batch: %w", err)
	case len(res.Failed) > 0:
		f.log.Error("flush: documents refused by MongoDB moved to dead letters",
			append(attrs, "dead_letter", dlIDs, "err", firstErr(res.Failed))...)
	default:
		f.log.Debug("flush: batch", attrs...)
	}
	return st, nil
}

func firstErr(fs []keepwatch.DocError) error {
	if len(fs) == 0 {
		return nil
	}
	return fs[0].Err
}

// failBatch handles a batch the server refused as a whole: the entries
// written (todo, indexes into c.Entries) that reach DeadLetterAfter failed
// attempts with these are dead-lettered, and the claim is released, the
// dead-lettered entries as done and the others with their failed attempts.
// It returns how many entries it dead-lettered and the dead letter's id.
func (f *Flusher) failBatch(held, rctx context.Context, c *keepwatch.Claim, todo, done []int, attempts int, cause error,
	release func(done []int, failed int) error) (int, string, error) {
	var past []int
	for _, i := range todo {
		if c.Failures[i].Count+attempts >= f.cfg.DeadLetterAfter {
			past = append(past, i)
		}
	}
	var (
		id  string
		err error
		n   int
	)
	if len(past) > 0 {
		if id, err = f.addDeadLetter(held, rctx, f.deadLetter(c, past, attempts, cause.Error())); err == nil {
			done = append(done, past...)
			n = len(past)
		}
	}
	if rerr := release(done, attempts); rerr != nil {
		err = errors.Join(err, rerr)
	}
	if err != nil {
		return n, id, fmt.Errorf("flush batch: %w", err)
	}
	return n, id, nil
}

// deadLetter builds the dead letter of c's entries idx, which failed attempts
// more times in this claim on top of their failures before it.
func (f *Flusher) deadLetter(c *keepwatch.Claim, idx []int, attempts int, cause string) keepwatch.DeadLetter {
	now := time.Now()
	dl := keepwatch.DeadLetter{Error: cause, FirstFailure: now, LastFailure: now, Entries: make([]keepwatch.DeadEntry, len(idx))}
	for k, i := range idx {
		dl.Entries[k] = keepwatch.DeadEntry{Progress: c.Entries[i]}
		fl := c.Failures[i]
		dl.Attempts = max(dl.Attempts, fl.Count+attempts)
		if fl.Count > 0 && fl.Since.Before(dl.FirstFailure) {
			dl.FirstFailure = fl.Since
		}
	}
	return dl
}

// addDeadLetter stores a dead letter, retrying while MongoDB is unreachable
// like a batch write, and only while the claim holds (held) and the flusher
// runs (rctx). Until it is stored, its entries stay in the buffer.
func (f *Flusher) addDeadLetter(held, rctx context.Context, dl keepwatch.DeadLetter) (string, error) {
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(min(200*time.Millisecond, f.cfg.MaxBackoff)),
		backoff.WithMaxInterval(f.cfg.MaxBackoff),
		backoff.WithMaxElapsedTime(0),
	)
	id, err := backoff.RetryNotifyWithData(func() (string, error) {
		id, err := f.store.AddDeadLetter(held, dl)
		if err != nil && (held.Err() != nil || !errors.Is(err, keepwatch.ErrUnavailable)) {
			return "", backoff.Permanent(err)
		}
		return id, err
	}, backoff.WithContext(backoff.WithMaxRetries(b, uint64(f.cfg.MaxRetries)), rctx),
		func(error, time.Duration) { f.m.retried.Inc() })
	if err != nil {
		return "", fmt.Errorf("add dead letter: %w", err)
	}
	f.m.deadLettered.Add(float64(len(dl.Entries)))
	f.m.deadLetters.Inc()
	return id, nil
}

func (f *Flusher) refreshDeadLetters(ctx context.Context) {
	if n, err := f.store.CountDeadLetters(ctx); err == nil {
		f.m.deadLetters.Set(float64(n))
	}
}
