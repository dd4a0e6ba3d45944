package command

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/keepwatch/keepwatch"
)

// rejectReasons are created up front so every series starts at zero.
var rejectReasons = map[keepwatch.Code]string{
	keepwatch.EMALFORMED:    "malformed",
	keepwatch.EUNAUTHORIZED: "unauthorized",
	keepwatch.ETOOLARGE:     "too_large",
	keepwatch.EUNSUPPORTED:  "unsupported_media_type",
	keepwatch.EINVALID:      "invalid",
	keepwatch.ERATELIMITED:  "rate_limited",
	keepwatch.EUNAVAILABLE:  "unavailable",
}

type metrics struct {
	accepted   prometheus.Counter
	rejected   map[string]prometheus.Counter
	bufferFull prometheus.Counter
	commitSize prometheus.Histogram
	commitDur  prometheus.Histogram
	highWater  prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	m := &metrics{
		accepted: f.NewCounter(prometheus.CounterOpts{Name: "keepwatch_events_accepted_total",
			Help: "Progress events stored in the buffer (acknowledged with 202)."}),
		commitSize: f.NewHistogram(prometheus.HistogramOpts{Name: "keepwatch_commit_batch_size",
			Help: "Requests carried by one group-commit round trip to Redis.", Buckets: prometheus.ExponentialBuckets(1, 2, 10)}),
		commitDur: f.NewHistogram(prometheus.HistogramOpts{Name: "keepwatch_commit_duration_seconds",
			Help: "Duration of one group-commit round trip to Redis.", Buckets: prometheus.ExponentialBuckets(0.00005, 2, 14)}),
		highWater: f.NewGauge(prometheus.GaugeOpts{Name: "keepwatch_buffer_high_water_entries",
			Help: "The buffer's high-water mark (0: unlimited); above it writes get 503."}),
		rejected: map[string]prometheus.Counter{},
	}
	rej := f.NewCounterVec(prometheus.CounterOpts{Name: "keepwatch_events_rejected_total",
		Help: "Events refused, by reason; nothing of them was stored (a request refused as a whole counts once)."}, []string{"reason"})
	for _, r := range rejectReasons {
		m.rejected[r] = rej.WithLabelValues(r)
	}
	m.bufferFull = rej.WithLabelValues("buffer_full")
	return m
}

func (m *metrics) reject(err error) {
	if err == errBufferFull {
		m.bufferFull.Inc()
		return
	}
	if c, ok := m.rejected[rejectReasons[keepwatch.ErrorCode(err)]]; ok {
		c.Inc()
	}
}
