package command

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/keepwatch/keepwatch"
)

// StatsReader reads the buffer's backlog; errors wrap keepwatch.ErrUnavailable.
type StatsReader interface {
	Stats(ctx context.Context) (keepwatch.BufferStats, error)
}

// BufferGauges publishes the buffer's backlog: pending entries and the age of
// the oldest one (the flush lag). Both the command API and a standalone
// `keepwatch flush` run one.
type BufferGauges struct {
	pending prometheus.Gauge
	age     prometheus.Gauge
}

// NewBufferGauges registers the gauges on reg.
func NewBufferGauges(reg prometheus.Registerer) *BufferGauges {
	f := promauto.With(reg)
	return &BufferGauges{
		pending: f.NewGauge(prometheus.GaugeOpts{Name: "keepwatch_buffer_pending_entries",
			Help: "Entries pending in the Redis buffer (sampled)."}),
		age: f.NewGauge(prometheus.GaugeOpts{Name: "keepwatch_buffer_oldest_pending_age_seconds",
			Help: "Age of the oldest pending entry in the buffer: the flush lag (sampled)."}),
	}
}

// Run samples buf every interval until ctx is done. Errors are logged at most
// once per minute: a Redis outage already shows in /readyz and 503 counts.
func (g *BufferGauges) Run(ctx context.Context, buf StatsReader, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	var lastLog time.Time
	for {
		sctx, cancel := context.WithTimeout(ctx, every)
		st, err := buf.Stats(sctx)
		cancel()
		switch {
		case err != nil && ctx.Err() == nil && time.Since(lastLog) > time.Minute:
			log.Warn("sample buffer stats", "err", err)
			lastLog = time.Now()
		case err == nil:
			g.pending.Set(float64(st.Pending))
			age := 0.0
			if !st.Oldest.IsZero() {
				age = max(0, time.Since(st.Oldest).Seconds())
			}
			g.age.Set(age)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
