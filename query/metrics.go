package query

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// metrics are the query service's Prometheus series.
type metrics struct {
	overlayHits   prometheus.Counter
	overlayErrors prometheus.Counter
	mongoErrors   prometheus.Counter
	notModified   prometheus.Counter
	rowRead       prometheus.Histogram
	exportErrors  prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	return &metrics{
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
		rowRead: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "keepwatch_query_row_documents_read",
			Help:    "MongoDB documents read per keep-watching answer: those the row shows or skips (older episodes of a series shown, videos the rules drop), plus at most a batch.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 12),
		}),
		exportErrors: f.NewCounter(prometheus.CounterOpts{
			Name: "keepwatch_query_export_errors_total",
			Help: "Exports that broke off after their first line (a store failed mid-stream, or the client went away); the stream lacks its end line.",
		}),
	}
}
