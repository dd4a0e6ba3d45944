// Package edge is the HTTP shell every keepwatch service runs in: the command
// API, the query API and the `keepwatch flush` process. It owns what they all
// do the same way, so they do it once: the listener (which survives running
// out of file descriptors), connection and header bounds, request framing
// checks, bearer tokens with the per-user rate limit, the admin token and
// pprof, CORS, /healthz, /readyz, /metrics, /openapi.json, request metrics
// and the drain on SIGTERM.
//
// A service adds its routes with Handle and keeps only its handlers.
package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/adaptor"
	"github.com/gofiber/fiber/v2/middleware/cors"
	"github.com/oklog/run"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"

	"github.com/keepwatch/keepwatch/internal/problem"
)

// Config holds the bounds of one service's edge; cmd/keepwatch gives each a
// flag.
type Config struct {
	// ReadTimeout bounds the reading of one request; IdleTimeout the wait
	// of a keep-alive connection for its next one (0: ReadTimeout);
	// WriteTimeout the writing of one answer (0: none).
	ReadTimeout, IdleTimeout, WriteTimeout time.Duration
	// MaxConns bounds open client connections, each a goroutine with its
	// buffers and a file descriptor; past it a new connection gets 503.
	MaxConns int
	// MaxConnsPerIP bounds one client IPv4 address's connections (0: no
	// bound); past it a new connection gets 429.
	MaxConnsPerIP int
	// Files, when Limit is set, clamps MaxConns to what the open-file limit
	// leaves this server.
	Files FileBudget
	// MaxHeaderBytes bounds the request line and headers (431 above); each
	// open connection holds a read buffer of this size.
	MaxHeaderBytes int
	// BodyLimit bounds a request body (413 above).
	BodyLimit int
	// CORS lets browsers on other origins call the service.
	CORS CORS
	// Rate limits each user's requests (Limit 0: no limit).
	Rate RateConfig
	// AdminToken guards /debug/pprof (empty: pprof off).
	AdminToken string
	// OpenAPI is served at /openapi.json when set.
	OpenAPI []byte
	// DrainDelay is the time between readiness turning 503 and the
	// listener closing on SIGTERM; Grace the time requests in flight then
	// get to finish.
	DrainDelay, Grace time.Duration
}

// FileBudget is what the process's open-file limit leaves one server's
// connections: (Limit − Reserved) / Servers.
type FileBudget struct {
	// Limit is the process's open-file limit (see FileLimit); 0 disables
	// the clamp.
	Limit uint64
	// Reserved counts the descriptors the process needs besides client
	// connections: its Redis and MongoDB pools, files, listeners.
	Reserved int
	// Servers is how many edges share the process (keepwatch dev runs two).
	Servers int
}

// minConnBudget is the fewest connections a server is started with; below it
// the open-file limit is an operator's mistake to report, not to work around.
const minConnBudget = 16

// budget returns the connections the limit leaves one server, or 0 when
// there is no limit to respect.
func (f FileBudget) budget() int {
	if f.Limit == 0 {
		return 0
	}
	free := int64(f.Limit) - int64(f.Reserved)
	return int(free / int64(max(1, f.Servers)))
}

// Validate checks the bounds, naming the flag to fix.
func (cfg Config) Validate() error {
	switch {
	case cfg.ReadTimeout <= 0:
		return errors.New("--read-timeout must be positive: without it a slow client holds a connection for ever")
	case cfg.IdleTimeout < 0 || cfg.WriteTimeout < 0:
		return errors.New("--idle-timeout and --write-timeout must not be negative")
	case cfg.MaxConns <= 0:
		return errors.New("--max-conns must be positive")
	case cfg.MaxConnsPerIP < 0:
		return errors.New("--max-conns-per-ip must not be negative")
	case cfg.MaxHeaderBytes < 1024:
		return errors.New("--max-header-bytes must be at least 1024")
	case cfg.BodyLimit <= 0:
		return errors.New("--body-limit must be positive")
	case cfg.Rate.Limit < 0 || (cfg.Rate.Limit > 0 && cfg.Rate.Burst < 1):
		return errors.New("--rate-limit must not be negative, and --rate-burst must be at least 1 when it is set")
	case cfg.DrainDelay < 0 || cfg.Grace < 0:
		return errors.New("--drain-delay and --shutdown-grace must not be negative")
	case cfg.Files.Limit > 0 && cfg.Files.budget() < minConnBudget:
		return fmt.Errorf("the open-file limit (%d) leaves fewer than %d connections once the %d descriptors Redis, MongoDB and files need are set aside: raise it (ulimit -n, LimitNOFILE, or the container's nofile)",
			cfg.Files.Limit, minConnBudget, cfg.Files.Reserved)
	}
	return cfg.CORS.validate()
}

// Verifier checks a bearer token at a time and returns its user; failures are
// *keepwatch.Error with code EUNAUTHORIZED. *auth.Verifier is one.
type Verifier interface {
	// VerifyData returns the token's user and what the function given to
	// Attach returned for it.
	VerifyData(token []byte, now time.Time) (userID string, data any, err error)
	// Attach sets the function whose result VerifyData returns; the verifier
	// may keep the result with the token while it stays valid.
	Attach(fn func(userID string) any)
}

// Deps are what the shell uses of the process.
type Deps struct {
	// Verifier authenticates bearer tokens; nil for a service without
	// authenticated routes (keepwatch flush).
	Verifier Verifier
	// Ready tells /readyz whether the service's dependencies answer.
	Ready func(ctx context.Context) error
	// Registerer receives the shell's metrics; Gatherer is served at
	// /metrics (nothing is served when nil).
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	// Logger logs what an operator must see, never a line per request.
	Logger *slog.Logger
}

// Handler serves one route. recv is when the request was received: one clock
// read serves both the latency metric and the event time.
type Handler func(c *fiber.Ctx, recv time.Time) error

// Shell is one service's HTTP edge.
type Shell struct {
	cfg     Config
	deps    Deps
	app     *fiber.App
	handler fasthttp.RequestHandler // app's, behind the framing check
	m       *metrics
	limiter *rateLimiter
	routes  []route
	onError func(route string, err error)
	ready   atomic.Bool // false once draining
	// clock, when set (tests), replaces the receive time of requests.
	clock func() time.Time
}

// readyTimeout bounds the dependency check of /readyz: a probe must get an
// answer before its own timeout, whatever the dependencies do.
const readyTimeout = 2 * time.Second

// New builds the shell and its built-in routes. It does not listen.
func New(cfg Config, deps Deps) (*Shell, error) {
	if deps.Ready == nil || deps.Registerer == nil || deps.Logger == nil {
		return nil, errors.New("edge: Ready, Registerer and Logger are required")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if b := cfg.Files.budget(); b > 0 && cfg.MaxConns > b {
		deps.Logger.Warn("--max-conns lowered to what the open-file limit leaves",
			"max_conns", cfg.MaxConns, "lowered_to", b, "open_file_limit", cfg.Files.Limit, "reserved", cfg.Files.Reserved)
		cfg.MaxConns = b
	}
	s := &Shell{cfg: cfg, deps: deps, m: newMetrics(deps.Registerer)}
	s.limiter = newRateLimiter(cfg.Rate)
	if deps.Verifier != nil && s.limiter != nil {
		// The verifier keeps each token's bucket, so a request finds both
		// in one lookup: the two lookups were 7% of a request in the
		// profile.
		deps.Verifier.Attach(func(user string) any { return s.limiter.bucketFor(user, s.now()) })
	}
	s.app = fiber.New(fiber.Config{
		DisableStartupMessage: true,
		ErrorHandler:          s.errorHandler,
		BodyLimit:             cfg.BodyLimit,
		ReadBufferSize:        cfg.MaxHeaderBytes,
		ReadTimeout:           cfg.ReadTimeout,
		WriteTimeout:          cfg.WriteTimeout,
		IdleTimeout:           cfg.IdleTimeout,
		Concurrency:           cfg.MaxConns,
	})
	srv := s.app.Server()
	srv.MaxConnsPerIP = cfg.MaxConnsPerIP
	s.handler = s.checkFraming(srv.Handler)
	srv.Handler = s.handler
	s.m.maxConns.Set(float64(cfg.MaxConns))
	deps.Registerer.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keepwatch_http_open_connections",
		Help: "Client connections open now (at most keepwatch_http_max_connections)."},
		func() float64 { return float64(srv.GetOpenConnectionsCount()) }))
	if c := cfg.CORS; len(c.Origins) > 0 {
		s.app.Use(cors.New(cors.Config{
			AllowOrigins:  strings.Join(c.Origins, ","),
			AllowMethods:  c.Methods,
			AllowHeaders:  c.Headers,
			ExposeHeaders: c.Expose,
			// Browsers cap it (Chromium at 2 hours): a player that posts
			// every 10 s sends one preflight per cap, and the post of a
			// page being hidden (fetch keepalive) finds it cached.
			MaxAge: 7200,
		}))
	}
	s.Handle(fiber.MethodGet, "/healthz", fiber.StatusOK, func(c *fiber.Ctx, _ time.Time) error { return c.SendString("ok\n") })
	s.Handle(fiber.MethodGet, "/readyz", fiber.StatusOK, s.readyz)
	if deps.Gatherer != nil {
		h := adaptor.HTTPHandler(promhttp.HandlerFor(deps.Gatherer, promhttp.HandlerOpts{}))
		s.Handle(fiber.MethodGet, "/metrics", fiber.StatusOK, func(c *fiber.Ctx, _ time.Time) error { return h(c) })
	}
	if cfg.OpenAPI != nil {
		s.Handle(fiber.MethodGet, "/openapi.json", fiber.StatusOK, func(c *fiber.Ctx, _ time.Time) error {
			c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
			return c.Send(cfg.OpenAPI)
		})
	}
	if cfg.AdminToken != "" {
		s.mountPprof()
	}
	s.ready.Store(true)
	s.m.ready.Set(1)
	return s, nil
}

// App is the Fiber app, for in-process tests (App().Test).
func (s *Shell) App() *fiber.App { return s.app }

// Handler is the fasthttp handler the server runs, framing check included,
// for benchmarks that skip the network.
func (s *Shell) Handler() fasthttp.RequestHandler {
	s.app.Handler() // builds the routing tree, as serving does
	return s.handler
}

// SetClock replaces the clock that stamps received requests, for tests.
func (s *Shell) SetClock(now func() time.Time) { s.clock = now }

// now reads the clock that stamps received requests.
func (s *Shell) now() time.Time {
	if s.clock != nil {
		return s.clock()
	}
	return time.Now()
}

// OnError sets a function called with the route label of every request
// answered with an error, and the error: the command API counts rejected
// events with it. Set it before serving.
func (s *Shell) OnError(fn func(route string, err error)) { s.onError = fn }

// Handle adds a route. path is in Fiber's syntax (/v1/progress/:video_id) and
// labels the latency histogram in OpenAPI's (/v1/progress/{video_id}); the
// series of status ok starts at zero. An error h returns is answered as
// problem details.
func (s *Shell) Handle(method, path string, ok int, h Handler) {
	r := newRoute(method, path)
	s.routes = append(s.routes, r)
	obs := s.m.forRoute(r.label, ok)
	// One clock read serves the latency and the receive time: on some
	// virtual machines reading the clock is a system call, and it showed
	// in the profile.
	fh := func(c *fiber.Ctx) error {
		// fasthttp stamps each request just before calling the handler.
		start := c.Context().Time()
		if start.IsZero() {
			start = time.Now()
		}
		recv := start
		if s.clock != nil {
			recv = s.clock()
		}
		if err := h(c, recv); err != nil {
			if s.onError != nil {
				s.onError(r.label, err)
			}
			_ = problem.Write(c, err)
		}
		obs.observe(c.Response().StatusCode(), time.Since(start))
		return nil
	}
	if method == fiber.MethodGet {
		s.app.Get(path, fh) // and HEAD
		return
	}
	s.app.Add(method, path, fh)
}

// errorHandler answers the errors raised outside the handlers: unknown paths
// (404), known paths with another method (405, Fiber sets Allow), bodies over
// the limit (413), headers over the limit (431), unparsable requests and
// ambiguous framing (400).
func (s *Shell) errorHandler(c *fiber.Ctx, err error) error {
	label := s.routeLabel(c.Path())
	if s.onError != nil {
		s.onError(label, problem.AsError(err))
	}
	_ = problem.Write(c, err)
	start := c.Context().Time()
	if start.IsZero() {
		start = time.Now()
	}
	s.m.observe(label, c.Response().StatusCode(), time.Since(start))
	return nil
}

func (s *Shell) readyz(c *fiber.Ctx, _ time.Time) error {
	if !s.ready.Load() {
		return c.Status(fiber.StatusServiceUnavailable).SendString("shutting down\n")
	}
	ctx, cancel := context.WithTimeout(c.UserContext(), readyTimeout)
	defer cancel()
	if err := s.deps.Ready(ctx); err != nil {
		s.m.ready.Set(0)
		return c.Status(fiber.StatusServiceUnavailable).SendString("not ready: a dependency does not answer\n")
	}
	s.m.ready.Set(1)
	return c.SendString("ok\n")
}

// Drain turns /readyz to 503 so load balancers stop sending traffic.
func (s *Shell) Drain() {
	s.ready.Store(false)
	s.m.ready.Set(0)
}

// Serve serves ln until Shutdown; Accept errors of a process out of file
// descriptors are waited out, never returned (see retryListener).
func (s *Shell) Serve(ln net.Listener) error {
	return s.app.Listener(s.retrying(ln))
}

// Shutdown stops accepting connections and waits, until ctx ends, for the
// requests in flight to be answered.
func (s *Shell) Shutdown(ctx context.Context) error {
	s.Drain()
	if err := s.app.ShutdownWithContext(ctx); err != nil {
		return fmt.Errorf("shut down http server: %w", err)
	}
	return nil
}

// Stopping says what happens around the shutdown of a served shell.
type Stopping struct {
	// Wait, when set, holds the listener open (within Grace) until it is
	// closed: keepwatch flush keeps /readyz and /metrics up until its last
	// batch is written.
	Wait <-chan struct{}
	// Stopped runs once the server is down: release what handlers used.
	Stopped func()
}

// AddTo adds the server on ln to g as an actor (oklog/run). On interrupt,
// readiness turns 503 first, DrainDelay lets load balancers notice, then the
// requests in flight get Grace to finish, then Stopped runs.
func (s *Shell) AddTo(g *run.Group, ln net.Listener, st Stopping) {
	ln = s.retrying(ln)
	g.Add(func() error {
		return s.Serve(ln)
	}, func(error) {
		s.Drain()
		time.Sleep(s.cfg.DrainDelay)
		if st.Wait != nil {
			select {
			case <-st.Wait:
			case <-time.After(s.cfg.Grace):
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Grace)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			s.deps.Logger.Error("shutdown", "err", err)
		}
		// Shutdown closes only a listener being served: one whose Serve
		// has not started yet (the group stopped at once) must be closed
		// too, or Serve would start after and never return.
		_ = ln.Close()
		if st.Stopped != nil {
			st.Stopped()
		}
	})
}
