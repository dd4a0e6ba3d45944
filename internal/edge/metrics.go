package edge

import (
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// otherRoute labels requests to paths no route serves, so unknown paths do not
// grow the label set.
const otherRoute = "other"

// metrics are the shell's series. The service label comes from the
// registerer cmd/keepwatch wraps, so that two services in one process
// (keepwatch dev) register the same names apart.
type metrics struct {
	latency  *prometheus.HistogramVec
	ready    prometheus.Gauge
	maxConns prometheus.Gauge
	retries  prometheus.Counter
	routes   sync.Map // label → *routeObserver, for requests answered outside a route
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	return &metrics{
		latency: f.NewHistogramVec(prometheus.HistogramOpts{Name: "keepwatch_http_request_duration_seconds",
			Help:    "HTTP request latency by route and status code.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}},
			[]string{"route", "code"}),
		ready: f.NewGauge(prometheus.GaugeOpts{Name: "keepwatch_ready",
			Help: "1 while the service accepts traffic, 0 while draining or while a dependency does not answer /readyz."}),
		maxConns: f.NewGauge(prometheus.GaugeOpts{Name: "keepwatch_http_max_connections",
			Help: "Client connections the server accepts at most: --max-conns, lowered to what the open-file limit leaves."}),
		retries: f.NewCounter(prometheus.CounterOpts{Name: "keepwatch_http_accept_retries_total",
			Help: "Connections the listener could not accept yet because the process was out of file descriptors (EMFILE, ENFILE) or the peer had gone (ECONNABORTED); it waits and retries."}),
	}
}

// routeObserver records one route's latency. The children of the histogram
// are cached by status code, so the request path does no label hashing and
// no allocation.
type routeObserver struct {
	vec    *prometheus.HistogramVec
	route  string
	byCode [600]atomic.Pointer[observer]
}

type observer struct{ prometheus.Observer }

// forRoute returns the route's observer, with the series of status ok made
// up front so that it starts at zero.
func (m *metrics) forRoute(route string, ok int) *routeObserver {
	if o, found := m.routes.Load(route); found {
		return o.(*routeObserver)
	}
	r := &routeObserver{vec: m.latency, route: route}
	if ok > 0 {
		r.child(ok)
	}
	o, _ := m.routes.LoadOrStore(route, r)
	return o.(*routeObserver)
}

func (r *routeObserver) child(code int) prometheus.Observer {
	if code < 0 || code >= len(r.byCode) {
		code = 0
	}
	if o := r.byCode[code].Load(); o != nil {
		return o.Observer
	}
	o := &observer{r.vec.WithLabelValues(r.route, strconv.Itoa(code))}
	if !r.byCode[code].CompareAndSwap(nil, o) {
		return r.byCode[code].Load().Observer
	}
	return o.Observer
}

func (r *routeObserver) observe(code int, d time.Duration) {
	r.child(code).Observe(d.Seconds())
}

// observe records a request answered outside a route's handler.
func (m *metrics) observe(route string, code int, d time.Duration) {
	m.forRoute(route, 0).observe(code, d)
}
