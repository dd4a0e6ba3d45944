package flush

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// SweepStore is what the retention sweep needs of MongoDB.
type SweepStore interface {
	// SweepExpired deletes up to max documents whose expiry has passed at
	// now and returns how many it deleted.
	SweepExpired(ctx context.Context, now time.Time, max int) (int, error)
	// BackfillExpiry gives up to max documents written without an expiry
	// theirs and returns how many it updated.
	BackfillExpiry(ctx context.Context, max int) (int, error)
}

// SweepConfig bounds the retention sweep.
type SweepConfig struct {
	// Interval between two sweeps; 0 turns the sweep off.
	Interval time.Duration
	// Batch is the most documents one delete (or backfill) touches.
	Batch int
	// MaxPerSweep is the most documents one sweep deletes; the rest waits
	// for the next, so a sweep after a long pause stays short.
	MaxPerSweep int
}

// Sweeper removes progress past its retention where the server has no TTL
// index (FerretDB), and checks behind MongoDB's TTL monitor elsewhere, in
// bounded batches; it also gives documents written before expiry existed
// theirs, a batch per sweep. Several sweepers may run at once: deleting what
// another deleted is a no-op.
type Sweeper struct {
	store SweepStore
	cfg   SweepConfig
	log   *slog.Logger
	now   func() time.Time

	removed    prometheus.Counter
	backfilled prometheus.Counter
	errors     prometheus.Counter
}

// NewSweeper returns a sweeper; its metrics are registered on reg.
func NewSweeper(store SweepStore, cfg SweepConfig, log *slog.Logger, reg prometheus.Registerer) (*Sweeper, error) {
	if store == nil || log == nil || reg == nil {
		return nil, errors.New("new sweeper: store, logger and registry are required")
	}
	if cfg.Interval < 0 || cfg.Batch < 1 || cfg.MaxPerSweep < cfg.Batch {
		return nil, fmt.Errorf("new sweeper: --retention-sweep-interval must not be negative, --retention-sweep-batch must be positive and at most --retention-sweep-max (%d, %d)", cfg.Batch, cfg.MaxPerSweep)
	}
	f := promauto.With(reg)
	return &Sweeper{store: store, cfg: cfg, log: log, now: time.Now,
		removed: f.NewCounter(prometheus.CounterOpts{Name: "keepwatch_retention_removed_total",
			Help: "Progress documents the retention sweep deleted because their expiry (event time + --retention) passed."}),
		backfilled: f.NewCounter(prometheus.CounterOpts{Name: "keepwatch_retention_backfilled_total",
			Help: "Progress documents written without an expiry that the sweep gave one."}),
		errors: f.NewCounter(prometheus.CounterOpts{Name: "keepwatch_retention_sweep_errors_total",
			Help: "Retention sweeps that stopped on an error; the next sweep carries on."}),
	}, nil
}

// Run sweeps every interval until ctx ends; it returns nil then. With a zero
// interval it only waits for ctx.
func (s *Sweeper) Run(ctx context.Context) error {
	if s.cfg.Interval == 0 {
		<-ctx.Done()
		return nil
	}
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	for {
		if _, _, err := s.SweepOnce(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("retention sweep stopped early; the next one carries on", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// SweepOnce gives a batch of documents without an expiry theirs, then
// deletes expired documents a batch at a time, up to MaxPerSweep, and
// returns how many it deleted and updated.
func (s *Sweeper) SweepOnce(ctx context.Context) (removed, backfilled int, err error) {
	defer func() {
		s.removed.Add(float64(removed))
		s.backfilled.Add(float64(backfilled))
		if err != nil {
			s.errors.Inc()
		}
	}()
	if backfilled, err = s.store.BackfillExpiry(ctx, s.cfg.Batch); err != nil {
		return 0, backfilled, fmt.Errorf("retention sweep: %w", err)
	}
	now := s.now()
	for removed < s.cfg.MaxPerSweep {
		n, err := s.store.SweepExpired(ctx, now, min(s.cfg.Batch, s.cfg.MaxPerSweep-removed))
		removed += n
		if err != nil {
			return removed, backfilled, fmt.Errorf("retention sweep: %w", err)
		}
		if n < s.cfg.Batch {
			break
		}
	}
	return removed, backfilled, nil
}
