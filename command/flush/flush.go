// Package flush moves buffered progress from the Redis buffer to MongoDB.
//
// A Flusher claims a batch of one shard's pending entries with a lease, writes
// it with conditional upserts that never replace a newer state, and only then
// releases exactly the entries it handled: written, found stale, or put in the
// dead-letter store. An entry updated meanwhile stays pending with its newer
// value; a flusher that dies mid-batch leaves its lease to expire and the
// batch is claimed again. Several flushers (goroutines or processes) may run
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
// operators replay or discard them (see Replayer).
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
	"github.com/keepwatch/keepwatch/storage/mongo"
	"github.com/keepwatch/keepwatch/storage/redisbuf"
)

// Buffer is what the flusher needs of the Redis buffer.
type Buffer interface {
	// Shards is the number of shards Claim accepts.
	Shards() int
	// Claim leases up to max due entries of a shard; errors wrap
	// keepwatch.ErrUnavailable when Redis is unreachable.
	Claim(ctx context.Context, shard, max int, lease time.Duration) (*redisbuf.Claim, error)
	// Release removes the handled entries (indexes into c.Entries) whose
	// value is still the claimed one and makes the others due again.
	Release(ctx context.Context, c *redisbuf.Claim, done []int) error
}

// Store is what the flusher needs of MongoDB.
type Store interface {
	// WriteProgress applies states newest-wins; documents refused for good
	// are listed in the result, and the error wraps
	// keepwatch.ErrUnavailable when MongoDB is unreachable.
	WriteProgress(ctx context.Context, entries []keepwatch.Progress) (mongo.WriteResult, error)
	// AddDeadLetter stores a failed batch.
	AddDeadLetter(ctx context.Context, dl mongo.DeadLetter) (string, error)
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
	// Lease is how long a claim hides its entries from other flushers. A
	// flusher that dies leaves its batch for this long.
	Lease time.Duration
	// MaxRetries bounds the retries of one batch within one claim.
	MaxRetries int
	// MaxBackoff caps the wait between two retries.
	MaxBackoff time.Duration
	// DeadLetterAfter is how many failed attempts (not counting MongoDB
	// being unreachable) an entry gets before it is dead-lettered.
	DeadLetterAfter int
}

// DefaultConfig returns the documented defaults of the --flush-* flags.
func DefaultConfig() Config {
	return Config{
		Interval:        30 * time.Second,
		Batch:           500,
		Parallelism:     2,
		Lease:           2 * time.Minute,
		MaxRetries:      8,
		MaxBackoff:      30 * time.Second,
		DeadLetterAfter: 20,
	}
}

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
	// failures counts the failed attempts of entries whose batch fails for
	// a reason other than MongoDB being unreachable, by "<user>/<video>".
	// It holds only entries that are failing right now, and is kept in
	// memory: a restarted flusher starts counting again, which only delays
	// a dead letter.
	failures map[string]*failure
}

type failure struct {
	attempts int
	first    time.Time
}

// New returns a flusher. Metrics are registered on reg.
func New(buf Buffer, store Store, cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Flusher, error) {
	if buf == nil || store == nil || log == nil || reg == nil {
		return nil, errors.New("new flusher: buffer, store, logger and registry are required")
	}
	cfg = cfg.withDefaults()
	if cfg.Lease < 2*time.Second {
		return nil, fmt.Errorf("new flusher: lease %s is too short to write a batch", cfg.Lease)
	}
	return &Flusher{buf: buf, store: store, cfg: cfg, log: log, m: newMetrics(reg), failures: map[string]*failure{}}, nil
}

// Run drains the buffer at once and then every interval until ctx is
// cancelled. On cancellation it finishes the batches being written (their
// retries stop waiting), releases them and returns nil.
func (f *Flusher) Run(ctx context.Context) error {
	f.refreshDeadLetters(ctx)
	t := time.NewTicker(f.cfg.Interval)
	defer t.Stop()
	for {
		if _, err := f.FlushOnce(ctx); err != nil && ctx.Err() == nil {
			// One line per drain that stopped early; the cause is
			// counted per batch and logged there.
			f.log.Warn("flush: drain stopped early, next try at the next tick", "err", err)
		}
		f.refreshDeadLetters(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Stats sums what one drain did.
type Stats struct {
	Batches      int
	Entries      int
	Written      int
	Stale        int
	DeadLettered int
}

func (s *Stats) add(o Stats) {
	s.Batches += o.Batches
	s.Entries += o.Entries
	s.Written += o.Written
	s.Stale += o.Stale
	s.DeadLettered += o.DeadLettered
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
				st, err := f.drainShard(dctx, shard)
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
// due.
func (f *Flusher) drainShard(ctx context.Context, shard int) (Stats, error) {
	var total Stats
	for ctx.Err() == nil {
		c, err := f.buf.Claim(ctx, shard, f.cfg.Batch, f.cfg.Lease)
		if err != nil {
			return total, fmt.Errorf("flush shard %d: %w", shard, err)
		}
		if len(c.Entries) == 0 {
			// Release cleans index entries a crash may have left.
			if err := f.buf.Release(context.WithoutCancel(ctx), c, nil); err != nil {
				return total, fmt.Errorf("flush shard %d: %w", shard, err)
			}
			return total, nil
		}
		st, err := f.flushBatch(ctx, c)
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

// flushBatch writes one claimed batch and releases what it handled. ctx only
// cuts retries short: a write under way is finished (with the store's own
// timeout), so a shutdown does not waste the work.
func (f *Flusher) flushBatch(ctx context.Context, c *redisbuf.Claim) (Stats, error) {
	start := time.Now()
	wctx := context.WithoutCancel(ctx)
	entries := c.Entries
	st := Stats{Batches: 1, Entries: len(entries)}
	f.m.batchSize.Observe(float64(len(entries)))
	defer func() { f.m.duration.Observe(time.Since(start).Seconds()) }()

	var (
		res      mongo.WriteResult
		lastErr  error
		attempts int
	)
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(min(200*time.Millisecond, f.cfg.MaxBackoff)),
		backoff.WithMaxInterval(f.cfg.MaxBackoff),
		// Stay well inside the lease, so that no other flusher claims the
		// batch while this one still retries it.
		backoff.WithMaxElapsedTime(f.cfg.Lease/2),
	)
	err := backoff.RetryNotify(func() error {
		attempts++
		var err error
		res, err = f.store.WriteProgress(wctx, entries)
		lastErr = err
		return err
	}, backoff.WithContext(backoff.WithMaxRetries(b, uint64(f.cfg.MaxRetries)), ctx),
		func(error, time.Duration) { f.m.retried.Inc() })

	if err != nil {
		// Nothing was handled for sure.
		var (
			dlID string
			derr error
		)
		if !errors.Is(lastErr, keepwatch.ErrUnavailable) && ctx.Err() == nil {
			// The server answers but refuses the batch: count it
			// against its entries, dead-letter those past the bound,
			// and release the claim.
			st.DeadLettered, dlID, derr = f.failBatch(wctx, c, attempts, lastErr)
		} else if rerr := f.buf.Release(wctx, c, nil); rerr != nil {
			// MongoDB is unreachable or we are stopping: every entry
			// becomes due again at once, for the next drain or another
			// flusher. If Redis is down too, the lease will expire.
			derr = fmt.Errorf("flush batch: %w", rerr)
		}
		level := slog.LevelWarn
		if st.DeadLettered > 0 {
			level = slog.LevelError
		}
		f.log.Log(wctx, level, "flush: batch failed", "shard", c.Shard, "entries", len(entries), "attempts", attempts,
			"dead_lettered", st.DeadLettered, "dead_letter", dlID, "err", lastErr)
		if derr != nil {
			return st, derr
		}
		return st, fmt.Errorf("flush batch: %w", lastErr)
	}

	f.m.written.Add(float64(res.Written))
	f.m.stale.Add(float64(res.Stale))
	st.Written, st.Stale = res.Written, res.Stale

	failed := make(map[int]bool, len(res.Failed))
	var (
		dlID  string
		dlErr error
	)
	if len(res.Failed) > 0 {
		dl := mongo.DeadLetter{Error: res.Failed[0].Err.Error(), Attempts: attempts}
		for _, fe := range res.Failed {
			failed[fe.Index] = true
			dl.Entries = append(dl.Entries, mongo.DeadEntry{Progress: entries[fe.Index], Error: fe.Err.Error()})
		}
		dl.Attempts, dl.FirstFailure = f.priorFailures(dl.Entries, attempts)
		if dlID, dlErr = f.addDeadLetter(ctx, dl); dlErr == nil {
			clear(failed)
			st.DeadLettered = len(dl.Entries)
		}
		// Otherwise the refused entries stay in the buffer, to be
		// written (and refused) again at the next drain.
	}
	done := make([]int, 0, len(entries))
	for i := range entries {
		if !failed[i] {
			done = append(done, i)
		}
	}
	f.forget(entries, done)
	// If the release fails, the handled entries stay claimed until the
	// lease ends and are written again then, as stale: no harm but the work.
	err = errors.Join(dlErr, f.buf.Release(wctx, c, done))

	// One log line per batch at most.
	attrs := []any{"shard", c.Shard, "entries", len(entries), "written", res.Written, "stale", res.Stale,
		"dead_lettered", st.DeadLettered, "attempts", attempts}
	switch {
	case err != nil:
		f.log.Warn("flush: batch written but not fully released", append(attrs, "err", err)...)
		return st, fmt.Errorf("flush batch: %w", err)
	case st.DeadLettered > 0:
		f.log.Error("flush: documents refused by MongoDB moved to dead letters",
			append(attrs, "dead_letter", dlID, "err", res.Failed[0].Err)...)
	default:
		f.log.Debug("flush: batch", attrs...)
	}
	return st, nil
}

// failBatch records a failed attempt of every entry of c and dead-letters
// those that reached DeadLetterAfter attempts; it releases the claim: the
// dead-lettered entries as done, the others to be retried. It returns how
// many entries it dead-lettered and the dead letter's id.
func (f *Flusher) failBatch(ctx context.Context, c *redisbuf.Claim, attempts int, cause error) (int, string, error) {
	now := time.Now()
	var (
		dl   = mongo.DeadLetter{Error: cause.Error(), LastFailure: now}
		idxs []int
	)
	f.mu.Lock()
	for i, p := range c.Entries {
		id := keepwatch.ID(p.UserID, p.VideoID)
		fr := f.failures[id]
		if fr == nil {
			fr = &failure{first: now}
			f.failures[id] = fr
		}
		fr.attempts += attempts
		if fr.attempts >= f.cfg.DeadLetterAfter {
			idxs = append(idxs, i)
			dl.Entries = append(dl.Entries, mongo.DeadEntry{Progress: p})
			dl.Attempts = max(dl.Attempts, fr.attempts)
			if dl.FirstFailure.IsZero() || fr.first.Before(dl.FirstFailure) {
				dl.FirstFailure = fr.first
			}
		}
	}
	f.mu.Unlock()

	var (
		done []int
		id   string
		err  error
	)
	if len(idxs) > 0 {
		if id, err = f.addDeadLetter(ctx, dl); err == nil {
			done = idxs
			f.forget(c.Entries, done)
		}
	}
	if rerr := f.buf.Release(ctx, c, done); rerr != nil {
		err = errors.Join(err, rerr)
	}
	if err != nil {
		return len(done), id, fmt.Errorf("flush batch: %w", err)
	}
	return len(done), id, nil
}

// priorFailures folds earlier failed attempts of entries into a dead letter's
// attempt count and first failure.
func (f *Flusher) priorFailures(entries []mongo.DeadEntry, attempts int) (int, time.Time) {
	first := time.Now()
	n := attempts
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range entries {
		if fr := f.failures[keepwatch.ID(e.UserID, e.VideoID)]; fr != nil {
			n = max(n, fr.attempts+attempts)
			if fr.first.Before(first) {
				first = fr.first
			}
		}
	}
	return n, first
}

// forget drops the failure records of handled entries.
func (f *Flusher) forget(entries []keepwatch.Progress, done []int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.failures) == 0 {
		return
	}
	for _, i := range done {
		delete(f.failures, keepwatch.ID(entries[i].UserID, entries[i].VideoID))
	}
}

// addDeadLetter stores a dead letter, retrying while MongoDB is unreachable
// like a batch write. Until it is stored, its entries stay in the buffer.
func (f *Flusher) addDeadLetter(ctx context.Context, dl mongo.DeadLetter) (string, error) {
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(min(200*time.Millisecond, f.cfg.MaxBackoff)),
		backoff.WithMaxInterval(f.cfg.MaxBackoff),
		backoff.WithMaxElapsedTime(f.cfg.Lease/2),
	)
	id, err := backoff.RetryNotifyWithData(func() (string, error) {
		id, err := f.store.AddDeadLetter(context.WithoutCancel(ctx), dl)
		if err != nil && !errors.Is(err, keepwatch.ErrUnavailable) {
			return "", backoff.Permanent(err)
		}
		return id, err
	}, backoff.WithContext(backoff.WithMaxRetries(b, uint64(f.cfg.MaxRetries)), ctx),
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
