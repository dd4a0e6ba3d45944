package redisbuf

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// BacklogCollector exports the buffer's backlog, read from Redis at each
// scrape: keepwatch_buffer_pending_entries and
// keepwatch_buffer_oldest_pending_age_seconds (the flush lag). The backlog is
// the buffer's state, the same whichever process reads it, so every process
// that writes or drains the buffer (command, flush) registers one and
// dashboards take the max.
//
// Each scrape costs one pipeline of two commands per shard, bounded by
// timeout. When Redis does not answer, the two series are left out of that
// scrape (the backlog is unknown, and /readyz says why) and the error is
// logged at most once a minute.
func (b *Buffer) BacklogCollector(timeout time.Duration, log *slog.Logger) prometheus.Collector {
	return &backlog{
		b: b, timeout: timeout, log: log,
		pending: prometheus.NewDesc("keepwatch_buffer_pending_entries",
			"Entries pending in the Redis buffer, claimed ones included (read at scrape).", nil, nil),
		age: prometheus.NewDesc("keepwatch_buffer_oldest_pending_age_seconds",
			"Age of the oldest pending entry in the buffer: the flush lag (read at scrape).", nil, nil),
	}
}

type backlog struct {
	b       *Buffer
	timeout time.Duration
	log     *slog.Logger
	pending *prometheus.Desc
	age     *prometheus.Desc

	mu      sync.Mutex
	lastLog time.Time
}

func (c *backlog) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.pending
	ch <- c.age
}

func (c *backlog) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	st, err := c.b.Stats(ctx)
	if err != nil {
		c.mu.Lock()
		defer c.mu.Unlock()
		if time.Since(c.lastLog) > time.Minute {
			c.log.Warn("read the buffer's backlog for /metrics", "err", err)
			c.lastLog = time.Now()
		}
		return
	}
	age := 0.0
	if !st.Oldest.IsZero() {
		age = max(0, c.b.now().Sub(st.Oldest).Seconds())
	}
	ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(st.Pending))
	ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, age)
}
