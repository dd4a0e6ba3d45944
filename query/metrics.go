package query

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Help strings of the metrics the command side registers too: one registry
// (keepwatch dev) accepts two collectors of one name only when their help
// strings and label names agree, the service label telling them apart.
const (
	httpDurationHelp = "HTTP request latency by service, route and status code."
	readyHelp        = "1 while the service accepts traffic, 0 while starting or draining."
)

// metrics are the query service's Prometheus series.
type metrics struct {
	duration      *prometheus.HistogramVec
	overlayHits   prometheus.Counter
	overlayErrors prometheus.Counter
	mongoErrors   prometheus.Counter
	notModified   prometheus.Counter
	ready         prometheus.Gauge
}

// latencyBuckets are the command side's, so both services' series of the
// one histogram name compare bucket by bucket.
var latencyBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	service := prometheus.Labels{"service": "query"}
	m := &metrics{
		duration: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:        "keepwatch_http_request_duration_seconds",
			Help:        httpDurationHelp,
			ConstLabels: service,
			Buckets:     latencyBuckets,
		}, []string{"route", "code"}),
		overlayHits: f.NewCounter(prometheus.CounterOpts{
			Name: "keepwatch_query_overlay_hits_total",
			Help: "Answers in which an entry still pending in Redis replaced or added to MongoDB's state (read-your-writes at work).",
		}),
		overlayErrors: f.NewCounter(prometheus.CounterOpts{
			Name: "keepwatch_query_overlay_errors_total",
			Help: "Answers given from MongoDB alone because Redis could not be read (header X-Keepwatch-Overlay: unavailable).",
		}),
		mongoErrors: f.NewCounter(prometheus.CounterOpts{
			Name: "keepwatch_query_mongo_errors_total",
			Help: "MongoDB reads that failed (answered 503).",
		}),
		notModified: f.NewCounter(prometheus.CounterOpts{
			Name: "keepwatch_query_not_modified_total",
			Help: "Answers 304 Not Modified because the client's ETag matched.",
		}),
		ready: f.NewGauge(prometheus.GaugeOpts{
			Name:        "keepwatch_ready",
			Help:        readyHelp,
			ConstLabels: service,
		}),
	}
	// Start the usual series at zero so rates work from the first scrape.
	for _, r := range []string{routeKeepWatching, routeProgressBatch, routeProgressOne} {
		m.duration.WithLabelValues(r, "200")
	}
	return m
}
