// Package command is the write side of keepwatch: the HTTP API players post
// progress to, and the group commit that stores it in the buffer. It never
// talks to MongoDB; the flusher (command/flush) does.
package command

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/http/pprof"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/adaptor"
	"github.com/gofiber/fiber/v2/middleware/cors"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/keepwatch/keepwatch"
	"github.com/keepwatch/keepwatch/internal/problem"
)

// Buffer is what the command side needs of the Redis buffer.
type Buffer interface {
	Applier
	// Ping returns an error wrapping keepwatch.ErrUnavailable when unreachable.
	Ping(ctx context.Context) error
}

// Verifier checks a bearer token at a time and returns its user; failures are
// *keepwatch.Error with code EUNAUTHORIZED.
type Verifier interface {
	// VerifyData returns the token's user and what the function given to
	// Attach returned for it.
	VerifyData(token []byte, now time.Time) (userID string, data any, err error)
	// Attach sets the function whose result VerifyData returns; the verifier
	// may keep the result with the token while it stays valid.
	Attach(fn func(userID string) any)
}

// Config holds the command API's bounds; every field has a flag in cmd/keepwatch.
type Config struct {
	BodyLimit      int
	BatchMaxEvents int
	// MaxJSONDepth bounds how deep objects and arrays nest in a body. JSON
	// libraries stop at different depths (Python at about 1,000, fastjson at
	// 300), so a body nested deeper means nothing to some of them.
	MaxJSONDepth int
	MaxEventAge  time.Duration
	RateLimit    float64 // events per second per user; 0 disables
	RateBurst    int
	RateUsers    int // users the limiter tracks at most
	Commit       CommitConfig
	HighWater    int64 // for the metric; the buffer enforces it
	// ReadTimeout bounds the reading of one request, IdleTimeout the wait of
	// a keep-alive connection for its next one (0: ReadTimeout). There is no
	// write timeout: every answer fits in the socket buffer, and a deadline
	// per response showed in the profile.
	ReadTimeout, IdleTimeout time.Duration
	// MaxConns bounds open client connections, each of which holds a
	// goroutine and its buffers; past it a new connection gets 503.
	MaxConns   int
	AdminToken string // enables /debug/pprof when set
	OpenAPI    []byte // served at /openapi.json when set
	// CORSOrigins lists the origins (scheme://host[:port]) web players may
	// post from; empty turns CORS off.
	CORSOrigins []string
}

// MaxJSONDepth is the largest Config.MaxJSONDepth: fastjson, which reads the
// bodies, counts every value of a path and stops past 300.
const MaxJSONDepth = 256

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		BodyLimit: 64 << 10, BatchMaxEvents: 100, MaxJSONDepth: 32, MaxEventAge: 7 * 24 * time.Hour,
		RateLimit: 1, RateBurst: 20, RateUsers: 1_000_000,
		Commit:      CommitConfig{MaxBatch: 256, Workers: 2, Queue: 8192, Timeout: 2 * time.Second},
		ReadTimeout: 30 * time.Second, IdleTimeout: 120 * time.Second,
		MaxConns: 50_000,
	}
}

// Service is the command API.
type Service struct {
	cfg     Config
	app     *fiber.App
	buf     Buffer
	auth    Verifier
	limiter *rateLimiter
	commit  *committer
	// decoders holds *decoder: the full parser's memory, reused.
	decoders sync.Pool
	m        *metrics
	log      *slog.Logger
	ready    atomic.Bool
	// clock, when set (tests), replaces the receive time of requests.
	clock func() time.Time
}

// Validate checks the bounds, naming the flag to fix.
func (cfg Config) Validate() error {
	switch {
	case cfg.BodyLimit <= 0:
		return errors.New("--body-limit must be positive")
	case cfg.BatchMaxEvents <= 0:
		return errors.New("--batch-max-events must be positive")
	case cfg.MaxJSONDepth < 3 || cfg.MaxJSONDepth > MaxJSONDepth:
		return fmt.Errorf("--max-json-depth must be from 3 (a batch's events nest 3 deep) to %d", MaxJSONDepth)
	case cfg.MaxEventAge < 0:
		return errors.New("--max-event-age must not be negative")
	case cfg.RateLimit < 0 || (cfg.RateLimit > 0 && cfg.RateBurst < 1):
		return errors.New("--rate-limit must not be negative, and --rate-burst must be at least 1 when it is set")
	case cfg.Commit.MaxBatch <= 0:
		return errors.New("--commit-batch must be positive")
	case cfg.Commit.Workers <= 0:
		return errors.New("--commit-workers must be positive")
	case cfg.Commit.Queue <= 0:
		return errors.New("--commit-queue must be positive")
	case cfg.Commit.Window < 0:
		return errors.New("--commit-window must not be negative")
	case cfg.Commit.Timeout <= 0:
		return errors.New("--redis-timeout must be positive")
	case cfg.ReadTimeout <= 0:
		return errors.New("--read-timeout must be positive: without it a slow client holds a connection for ever")
	case cfg.IdleTimeout < 0:
		return errors.New("--idle-timeout must not be negative")
	case cfg.MaxConns <= 0:
		return errors.New("--max-conns must be positive")
	}
	for _, o := range cfg.CORSOrigins {
		if u, err := url.Parse(o); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
			return fmt.Errorf("--cors-origins: %q is not an origin: want scheme://host[:port]", o)
		}
	}
	return nil
}

// New builds the command API on buf and auth, registering its metrics on reg.
func New(cfg Config, buf Buffer, auth Verifier, reg prometheus.Registerer, gatherer prometheus.Gatherer, log *slog.Logger) (*Service, error) {
	if buf == nil || auth == nil || reg == nil || log == nil {
		return nil, errors.New("command: buffer, verifier, registry and logger are required")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("command: %w", err)
	}
	s := &Service{cfg: cfg, buf: buf, auth: auth, m: newMetrics(reg), log: log}
	s.decoders.New = func() any { return &decoder{maxDepth: cfg.MaxJSONDepth} }
	s.limiter = newRateLimiter(cfg.RateLimit, cfg.RateBurst, cfg.RateUsers)
	if s.limiter != nil {
		// The verifier keeps each token's bucket, so a request finds both in
		// one lookup: the two lookups were 7% of a request in the profile.
		auth.Attach(func(user string) any { return s.limiter.bucketFor(user, s.now()) })
	}
	s.commit = newCommitter(cfg.Commit, buf, func(n int, d time.Duration) {
		s.m.commitSize.Observe(float64(n))
		s.m.commitDur.Observe(d.Seconds())
	})
	s.m.highWater.Set(float64(cfg.HighWater))
	s.app = fiber.New(fiber.Config{
		BodyLimit:             cfg.BodyLimit,
		ErrorHandler:          s.errorHandler,
		DisableStartupMessage: true,
		ReadTimeout:           cfg.ReadTimeout,
		IdleTimeout:           cfg.IdleTimeout,
		Concurrency:           cfg.MaxConns,
	})
	s.routes(gatherer)
	s.ready.Store(true)
	s.m.ready.Set(1)
	return s, nil
}

// App is the Fiber app, for serving and for in-process tests.
func (s *Service) App() *fiber.App { return s.app }

// SetClock replaces the clock that stamps received requests, for tests.
func (s *Service) SetClock(now func() time.Time) { s.clock = now }

// now reads the clock that stamps received requests.
func (s *Service) now() time.Time {
	if s.clock != nil {
		return s.clock()
	}
	return time.Now()
}

func (s *Service) routes(gatherer prometheus.Gatherer) {
	if len(s.cfg.CORSOrigins) > 0 {
		// Web players post cross-origin with a bearer token, so every
		// request is preflighted; MaxAge lets the browser keep the answer,
		// which a page close's keepalive request then needs no round trip for.
		s.app.Use(cors.New(cors.Config{
			AllowOrigins:  strings.Join(s.cfg.CORSOrigins, ","),
			AllowMethods:  "POST,DELETE",
			AllowHeaders:  "Authorization,Content-Type",
			ExposeHeaders: "Retry-After",
			MaxAge:        600,
		}))
	}
	s.app.Post("/v1/progress", s.timed("/v1/progress", s.postProgress))
	s.app.Post("/v1/progress/batch", s.timed("/v1/progress/batch", s.postBatch))
	s.app.Delete("/v1/progress/:video_id", s.timed("/v1/progress/{video_id}", s.deleteProgress))
	s.app.Get("/healthz", func(c *fiber.Ctx) error { return c.SendString("ok") })
	s.app.Get("/readyz", s.readyz)
	if gatherer != nil {
		s.app.Get("/metrics", adaptor.HTTPHandler(promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{})))
	}
	if s.cfg.OpenAPI != nil {
		s.app.Get("/openapi.json", func(c *fiber.Ctx) error {
			c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
			return c.Send(s.cfg.OpenAPI)
		})
	}
	if s.cfg.AdminToken != "" {
		mountPprof(s.app, s.cfg.AdminToken)
	}
}

// mountPprof serves the Go profiler behind the admin token, so operators can
// profile a live instance without exposing it to players.
func mountPprof(app *fiber.App, token string) {
	want := []byte("Bearer " + token)
	g := app.Group("/debug/pprof", func(c *fiber.Ctx) error {
		// Constant time: a compare that stops at the first wrong byte lets a
		// caller find the token byte by byte from response times.
		if subtle.ConstantTimeCompare(c.Request().Header.Peek(fiber.HeaderAuthorization), want) != 1 {
			return problem.Write(c, keepwatch.Errorf(keepwatch.EUNAUTHORIZED, "the admin token is required"))
		}
		return c.Next()
	})
	g.Get("/", adaptor.HTTPHandlerFunc(pprof.Index))
	g.Get("/cmdline", adaptor.HTTPHandlerFunc(pprof.Cmdline))
	g.Get("/profile", adaptor.HTTPHandlerFunc(pprof.Profile))
	g.Get("/symbol", adaptor.HTTPHandlerFunc(pprof.Symbol))
	g.Get("/trace", adaptor.HTTPHandlerFunc(pprof.Trace))
	g.Get("/:name", func(c *fiber.Ctx) error {
		return adaptor.HTTPHandler(pprof.Handler(c.Params("name")))(c)
	})
}

// handler is a write handler; recv is when the request was received.
type handler func(c *fiber.Ctx, recv time.Time) error

// timed records the route's latency and turns handler errors into problem
// details, counting each rejection by reason. It reads the clock once for
// both the latency and the receive time: on some virtual machines reading the
// clock is a system call, and it showed in the profile.
func (s *Service) timed(route string, h handler) fiber.Handler {
	obs := s.m.forRoute(route)
	return func(c *fiber.Ctx) error {
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
			s.m.reject(err)
			_ = problem.Write(c, err)
		}
		obs.observe(c.Response().StatusCode(), time.Since(start))
		return nil
	}
}

// errorHandler answers errors raised outside the handlers (body over the
// limit, unknown routes), counting a too-large body as a rejected event.
func (s *Service) errorHandler(c *fiber.Ctx, err error) error {
	var fe *fiber.Error
	if errors.As(err, &fe) && fe.Code == fiber.StatusRequestEntityTooLarge {
		s.m.rejected["too_large"].Inc()
	}
	return problem.Write(c, err)
}

func (s *Service) readyz(c *fiber.Ctx) error {
	if !s.ready.Load() {
		return problem.Write(c, keepwatch.Errorf(keepwatch.EUNAVAILABLE, "shutting down"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := s.buf.Ping(ctx); err != nil {
		return problem.Write(c, &keepwatch.Error{Code: keepwatch.EUNAVAILABLE, Message: "redis is unreachable", Err: err})
	}
	return c.SendString("ready")
}

var (
	errNoToken = keepwatch.Errorf(keepwatch.EUNAUTHORIZED, "a bearer token is required")
	errNotJSON = keepwatch.Errorf(keepwatch.EUNSUPPORTED, "the body must be application/json")
	errTooFast = &keepwatch.Error{Code: keepwatch.ERATELIMITED, RetryAfter: 1, Message: "too many requests for this user; players post every 10 s"}
)

// user authenticates the request, returning the user and their rate bucket
// (nil without a rate limit).
func (s *Service) user(c *fiber.Ctx, recv time.Time) (string, *bucket, error) {
	h := c.Request().Header.Peek(fiber.HeaderAuthorization)
	const prefix = "Bearer "
	if len(h) <= len(prefix) || !bytes.EqualFold(h[:len(prefix)], []byte(prefix)) {
		return "", nil, errNoToken
	}
	user, data, err := s.auth.VerifyData(h[len(prefix):], recv)
	if err != nil {
		return "", nil, err
	}
	b, _ := data.(*bucket)
	if b == nil && s.limiter != nil { // a verifier that keeps nothing
		b = s.limiter.bucketFor(user, recv)
	}
	return user, b, nil
}

func isJSON(c *fiber.Ctx) bool {
	ct := c.Request().Header.ContentType()
	if i := bytes.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	ct = bytes.TrimSpace(ct)
	return bytes.EqualFold(ct, []byte(fiber.MIMEApplicationJSON))
}

// admit runs the checks every write shares: token, rate, content type.
func (s *Service) admit(c *fiber.Ctx, recv time.Time, needBody bool) (string, error) {
	user, b, err := s.user(c, recv)
	if err != nil {
		return "", err
	}
	if needBody && !isJSON(c) {
		return "", errNotJSON
	}
	if !s.limiter.allow(b, recv) {
		return "", errTooFast
	}
	return user, nil
}

var acceptedOne = []byte(`{"accepted":1}`)

func (s *Service) postProgress(c *fiber.Ctx, recv time.Time) error {
	user, err := s.admit(c, recv, true)
	if err != nil {
		return err
	}
	d := s.decoders.Get().(*decoder)
	ev, err := d.decodeProgress(c.Body(), timing{received: recv, maxAge: s.cfg.MaxEventAge})
	var entry keepwatch.Entry
	if err == nil {
		// The video id points into Fiber's reused request memory: copy it.
		entry = keepwatch.Entry{VideoID: string(ev.videoID), State: ev.state}
	}
	s.decoders.Put(d)
	if err != nil {
		return err
	}
	if err := s.commit.submitOne(user, entry); err != nil {
		return err
	}
	s.m.accepted.Inc()
	return acceptOne(c)
}

var jsonContentType = []byte(fiber.MIMEApplicationJSON)

// acceptOne writes the 202 of a single event. It sets the header directly:
// Fiber's c.Set normalizes the header name on every call, which showed in the
// profile.
func acceptOne(c *fiber.Ctx) error {
	c.Status(fiber.StatusAccepted)
	c.Response().Header.SetContentTypeBytes(jsonContentType)
	return c.Send(acceptedOne)
}

func (s *Service) postBatch(c *fiber.Ctx, recv time.Time) error {
	user, err := s.admit(c, recv, true)
	if err != nil {
		return err
	}
	d := s.decoders.Get().(*decoder)
	res, err := d.decodeBatch(c.Body(), timing{received: recv, maxAge: s.cfg.MaxEventAge}, s.cfg.BatchMaxEvents)
	entries := make([]keepwatch.Entry, len(res.events))
	for i, ev := range res.events {
		entries[i] = keepwatch.Entry{VideoID: string(ev.videoID), State: ev.state}
	}
	s.decoders.Put(d)
	if err != nil {
		return err
	}
	if len(entries) == 0 {
		fields := make([]keepwatch.FieldError, 0, len(res.rejected))
		for _, r := range res.rejected {
			for _, fe := range r.Errors {
				name := "events[" + strconv.Itoa(r.Index) + "]"
				if fe.Field != "" {
					name += "." + fe.Field
				}
				fields = append(fields, keepwatch.FieldError{Field: name, Detail: fe.Detail})
			}
		}
		// The error path counts one rejection; count the other events too,
		// so the metric counts events like the accepted one.
		s.m.rejected["invalid"].Add(float64(len(res.rejected) - 1))
		return &keepwatch.Error{Code: keepwatch.EINVALID, Message: "no event of the batch is valid", Fields: fields}
	}
	if err := s.commit.submit(keepwatch.Write{UserID: user, Entries: entries}); err != nil {
		return err
	}
	s.m.accepted.Add(float64(len(entries)))
	for range res.rejected {
		s.m.rejected["invalid"].Inc()
	}
	c.Status(fiber.StatusAccepted)
	rejected := res.rejected
	if rejected == nil {
		rejected = []rejection{}
	}
	return c.JSON(struct {
		Accepted int         `json:"accepted"`
		Rejected []rejection `json:"rejected"`
	}{len(entries), rejected})
}

// deleteProgress stores a tombstone. Its event time is the receive time minus
// the age the device measured when it sends ?ts=&sent_at= (a removal made
// offline), so it hides older progress and never newer.
func (s *Service) deleteProgress(c *fiber.Ctx, recv time.Time) error {
	user, err := s.admit(c, recv, false)
	if err != nil {
		return err
	}
	video := c.Params("video_id")
	var errs []keepwatch.FieldError
	if !keepwatch.ValidVideoID([]byte(video)) {
		errs = append(errs, keepwatch.FieldError{Field: "video_id", Detail: "must be 1–128 characters of A-Z a-z 0-9 . _ : -"})
	}
	ts, sentAt := queryMillis(c, "ts", &errs), queryMillis(c, "sent_at", &errs)
	if len(errs) > 0 {
		return &keepwatch.Error{Code: keepwatch.EINVALID, Message: "the removal has invalid fields", Fields: errs}
	}
	st := keepwatch.State{
		EventTime: keepwatch.EventTime(recv, ts, sentAt, s.cfg.MaxEventAge),
		Kind:      keepwatch.KindDeleted, Position: keepwatch.Unknown, Duration: keepwatch.Unknown,
	}
	if err := s.commit.submitOne(user, keepwatch.Entry{VideoID: string([]byte(video)), State: st}); err != nil {
		return err
	}
	s.m.accepted.Inc()
	return acceptOne(c)
}

func queryMillis(c *fiber.Ctx, name string, errs *[]keepwatch.FieldError) int64 {
	v := c.Query(name)
	if v == "" {
		return 0
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 || n > maxMillis {
		*errs = append(*errs, keepwatch.FieldError{Field: name, Detail: "must be a whole number of milliseconds since the Unix epoch"})
		return 0
	}
	return n
}

// Drain turns readiness off, so load balancers stop sending traffic.
func (s *Service) Drain() {
	s.ready.Store(false)
	s.m.ready.Set(0)
}

// Shutdown stops accepting connections, waits for in-flight requests (each
// answered only after its write is acknowledged) up to ctx's deadline, then
// stops the group commit.
func (s *Service) Shutdown(ctx context.Context) error {
	s.Drain()
	err := s.app.ShutdownWithContext(ctx)
	s.commit.close()
	if err != nil {
		return errors.Join(errors.New("shut down command api"), err)
	}
	return nil
}
