package command

import (
	"strconv"
	"sync"
	"time"

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
	latency    *prometheus.HistogramVec
	commitSize prometheus.Histogram
	commitDur  prometheus.Histogram
	highWater  prometheus.Gauge
	ready      prometheus.Gauge

	// observers caches the latency histogram's children by route and status,
	// so the request path does no label hashing.
	observers sync.Map // routeCode → prometheus.Observer
}

type routeCode struct {
	route string
	code  int
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	m := &metrics{
		accepted: f.NewCounter(prometheus.CounterOpts{Name: "keepwatch_events_accepted_total",
			Help: "Progress events stored in the buffer (acknowledged with 202)."}),
		latency: f.NewHistogramVec(prometheus.HistogramOpts{Name: "keepwatch_http_request_duration_seconds",
			Help:    "HTTP request latency by service, route and status code.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}},
			[]string{"service", "route", "code"}),
		commitSize: f.NewHistogram(prometheus.HistogramOpts{Name: "keepwatch_commit_batch_size",
			Help: "Requests carried by one group-commit round trip to Redis.", Buckets: prometheus.ExponentialBuckets(1, 2, 10)}),
		commitDur: f.NewHistogram(prometheus.HistogramOpts{Name: "keepwatch_commit_duration_seconds",
			Help: "Duration of one group-commit round trip to Redis.", Buckets: prometheus.ExponentialBuckets(0.00005, 2, 14)}),
		highWater: f.NewGauge(prometheus.GaugeOpts{Name: "keepwatch_buffer_high_water_entries",
			Help: "The buffer's high-water mark (0: unlimited); above it writes get 503."}),
		ready: f.NewGauge(prometheus.GaugeOpts{Name: "keepwatch_ready", ConstLabels: prometheus.Labels{"service": "command"},
			Help: "1 while the service accepts traffic, 0 while starting or draining."}),
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

// routeObserver records one route's latency; the 202 series, nearly every
// request, is resolved up front.
type routeObserver struct {
	m        *metrics
	route    string
	accepted prometheus.Observer
}

func (m *metrics) forRoute(route string) *routeObserver {
	return &routeObserver{m: m, route: route, accepted: m.latency.WithLabelValues("command", route, "202")}
}

func (r *routeObserver) observe(code int, d time.Duration) {
	if code == 202 {
		r.accepted.Observe(d.Seconds())
		return
	}
	r.m.observe(r.route, code, d)
}

func (m *metrics) observe(route string, code int, d time.Duration) {
	k := routeCode{route, code}
	o, ok := m.observers.Load(k)
	if !ok {
		o, _ = m.observers.LoadOrStore(k, m.latency.WithLabelValues("command", route, strconv.Itoa(code)))
	}
	o.(prometheus.Observer).Observe(d.Seconds())
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
