package query

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/adaptor"
	"github.com/gofiber/fiber/v2/middleware/cors"
	"github.com/gofiber/fiber/v2/middleware/pprof"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/keepwatch/keepwatch"
	"github.com/keepwatch/keepwatch/internal/problem"
)

// Routes, as they label the latency histogram.
const (
	routeKeepWatching  = "/v1/keep-watching"
	routeProgressBatch = "/v1/progress"
	routeProgressOne   = "/v1/progress/:video_id"
)

// Limits of the API.
const (
	// DefaultLimit is the keep-watching row's length when the client gives none.
	DefaultLimit = 20
	// MaxLimit bounds the keep-watching row.
	MaxLimit = 100
	// MaxVideoIDs bounds a batch lookup.
	MaxVideoIDs = 100
)

// readyTimeout bounds the MongoDB ping of /readyz.
const readyTimeout = 2 * time.Second

// OverlayHeader is set to "unavailable" when the answer is MongoDB's alone
// because the Redis buffer could not be read: it may miss progress posted in
// the last flush interval.
const OverlayHeader = "X-Keepwatch-Overlay"

// Defaults of the connection bounds, for a Config field left 0 and for the
// flags of `keepwatch query`.
const (
	DefaultReadTimeout  = 10 * time.Second
	DefaultWriteTimeout = 10 * time.Second
	DefaultIdleTimeout  = 2 * time.Minute
	DefaultMaxConns     = 50_000
)

// Config configures the query service.
type Config struct {
	// FinishedThreshold is the percent at or above which a video is
	// finished and leaves keep-watching; 95 when 0.
	FinishedThreshold float64
	// Overlay merges the user's pending Redis entries into every answer
	// (read-your-writes). Without it, answers lag by up to a flush interval.
	Overlay bool
	// OverlayTimeout bounds the Redis read of an answer; 250ms when 0.
	OverlayTimeout time.Duration
	// ReadTimeout and WriteTimeout bound reading one request and writing its
	// answer; IdleTimeout bounds a keep-alive connection's wait for its next
	// request. MaxConns bounds open client connections; past it a new
	// connection gets 503. Each is its Default constant when 0.
	ReadTimeout, WriteTimeout, IdleTimeout time.Duration
	MaxConns                               int
	// CORSOrigins lists the origins (scheme://host[:port]) browsers may call
	// the API from; empty turns CORS off.
	CORSOrigins []string
	// AdminToken guards /debug/pprof (Authorization: Bearer <token>); empty
	// turns pprof off.
	AdminToken string
	// OpenAPI is served at /openapi.json when set.
	OpenAPI []byte
	// Registerer receives the service's metrics; Gatherer serves /metrics
	// (nothing is served when nil). Tests and keepwatch dev pass one registry
	// as both.
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	// Logger logs what an operator must see (never a line per request).
	Logger *slog.Logger
}

// Deps are what the service reads from.
type Deps struct {
	// Store is MongoDB; required.
	Store Store
	// Pending is the Redis buffer; used when Config.Overlay is set.
	Pending Pending
	// Verifier authenticates bearer tokens; required.
	Verifier Verifier
	// Ready reports whether the service can answer (MongoDB pings); /readyz
	// calls it. Redis is not required: without it answers come from MongoDB.
	Ready func(context.Context) error
}

// Server is the query service's HTTP API.
type Server struct {
	cfg      Config
	deps     Deps
	reader   *reader
	metrics  *metrics
	app      *fiber.App
	draining atomic.Bool
}

// New builds the query service. It does not listen: serve App() with
// Listener, or call App().Test in tests.
func New(cfg Config, deps Deps) (*Server, error) {
	if deps.Store == nil || deps.Verifier == nil || deps.Ready == nil {
		return nil, errors.New("query service: Store, Verifier and Ready are required")
	}
	if cfg.Overlay && deps.Pending == nil {
		return nil, errors.New("query service: the overlay needs Pending")
	}
	if cfg.FinishedThreshold == 0 {
		cfg.FinishedThreshold = 95
	}
	if cfg.FinishedThreshold < 0 || cfg.FinishedThreshold > 100 {
		return nil, fmt.Errorf("query service: finished threshold %v is not a percent", cfg.FinishedThreshold)
	}
	if cfg.OverlayTimeout <= 0 {
		cfg.OverlayTimeout = 250 * time.Millisecond
	}
	for _, d := range []struct {
		t   *time.Duration
		def time.Duration
	}{{&cfg.ReadTimeout, DefaultReadTimeout}, {&cfg.WriteTimeout, DefaultWriteTimeout}, {&cfg.IdleTimeout, DefaultIdleTimeout}} {
		if *d.t <= 0 {
			*d.t = d.def
		}
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	for _, o := range cfg.CORSOrigins {
		if err := checkOrigin(o); err != nil {
			return nil, fmt.Errorf("query service: %w", err)
		}
	}
	s := &Server{cfg: cfg, deps: deps, metrics: newMetrics(cfg.Registerer)}
	pending := deps.Pending
	if !cfg.Overlay {
		pending = nil
	}
	s.reader = &reader{store: deps.Store, pending: pending, threshold: cfg.FinishedThreshold,
		overlayTimeout: cfg.OverlayTimeout, metrics: s.metrics}
	s.app = s.routes()
	s.metrics.ready.Set(1)
	return s, nil
}

// App is the service's fiber app.
func (s *Server) App() *fiber.App { return s.app }

// Drain turns /readyz to 503 so load balancers stop sending traffic, before a
// graceful shutdown.
func (s *Server) Drain() {
	s.draining.Store(true)
	s.metrics.ready.Set(0)
}

// Shutdown stops accepting connections and waits, until ctx ends, for the
// requests in flight to be answered.
func (s *Server) Shutdown(ctx context.Context) error {
	if err := s.app.ShutdownWithContext(ctx); err != nil {
		return fmt.Errorf("shut down the query API: %w", err)
	}
	return nil
}

// checkOrigin accepts what a browser sends as Origin: scheme://host[:port].
func checkOrigin(o string) error {
	u, err := url.Parse(o)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return fmt.Errorf("CORS origin %q: want scheme://host[:port]", o)
	}
	return nil
}

func (s *Server) routes() *fiber.App {
	app := fiber.New(fiber.Config{
		AppName:               "keepwatch query",
		DisableStartupMessage: true,
		ErrorHandler:          problem.ErrorHandler,
		ReadTimeout:           s.cfg.ReadTimeout,
		WriteTimeout:          s.cfg.WriteTimeout,
		IdleTimeout:           s.cfg.IdleTimeout,
		Concurrency:           s.cfg.MaxConns,
		// Only GET requests: nothing to read.
		BodyLimit: 4 << 10,
	})
	app.Use(s.measure)
	if len(s.cfg.CORSOrigins) > 0 {
		app.Use(cors.New(cors.Config{
			AllowOrigins:  strings.Join(s.cfg.CORSOrigins, ","),
			AllowMethods:  "GET,HEAD",
			AllowHeaders:  "Authorization,If-None-Match",
			ExposeHeaders: "ETag," + OverlayHeader + ",Retry-After",
			MaxAge:        600,
		}))
	}
	app.Get(routeKeepWatching, s.authed(s.getKeepWatching))
	app.Get(routeProgressBatch, s.authed(s.getProgressBatch))
	app.Get(routeProgressOne, s.authed(s.getProgressOne))

	app.Get("/healthz", func(c *fiber.Ctx) error { return c.SendString("ok\n") })
	app.Get("/readyz", s.readyz)
	if s.cfg.Gatherer != nil {
		app.Get("/metrics", adaptor.HTTPHandler(promhttp.HandlerFor(s.cfg.Gatherer, promhttp.HandlerOpts{})))
	}
	if s.cfg.OpenAPI != nil {
		app.Get("/openapi.json", func(c *fiber.Ctx) error {
			c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
			return c.Send(s.cfg.OpenAPI)
		})
	}
	if s.cfg.AdminToken != "" {
		app.Use("/debug/pprof", s.admin, pprof.New())
	}
	return app
}

// measure records every request's latency by route and status. Errors are
// written here (not after the middleware returns) so the status is known.
func (s *Server) measure(c *fiber.Ctx) error {
	start := time.Now()
	if err := c.Next(); err != nil {
		if err := problem.ErrorHandler(c, err); err != nil {
			_ = c.SendStatus(fiber.StatusInternalServerError)
		}
	}
	route := c.Route().Path
	switch route {
	case routeKeepWatching, routeProgressBatch, routeProgressOne, "/healthz", "/readyz", "/metrics", "/openapi.json":
	default:
		// Unknown paths must not grow the label set.
		route = "other"
	}
	s.metrics.duration.WithLabelValues(route, strconv.Itoa(c.Response().StatusCode())).Observe(time.Since(start).Seconds())
	return nil
}

func (s *Server) readyz(c *fiber.Ctx) error {
	if s.draining.Load() {
		return c.Status(fiber.StatusServiceUnavailable).SendString("shutting down\n")
	}
	// A probe must get an answer before its own timeout, whatever MongoDB's.
	ctx, cancel := context.WithTimeout(c.UserContext(), readyTimeout)
	defer cancel()
	if err := s.deps.Ready(ctx); err != nil {
		s.metrics.ready.Set(0)
		return c.Status(fiber.StatusServiceUnavailable).SendString("mongodb unreachable\n")
	}
	s.metrics.ready.Set(1)
	return c.SendString("ok\n")
}

func (s *Server) admin(c *fiber.Ctx) error {
	tok, ok := bearer(c)
	if !ok || subtle.ConstantTimeCompare(tok, []byte(s.cfg.AdminToken)) != 1 {
		return keepwatch.Errorf(keepwatch.EUNAUTHORIZED, "the admin token is required")
	}
	return c.Next()
}

// bearer returns the token of an "Authorization: Bearer <token>" header.
func bearer(c *fiber.Ctx) ([]byte, bool) {
	h := c.Request().Header.Peek(fiber.HeaderAuthorization)
	const prefix = "bearer "
	if len(h) <= len(prefix) || !bytes.EqualFold(h[:len(prefix)], []byte(prefix)) {
		return nil, false
	}
	return bytes.TrimSpace(h[len(prefix):]), true
}

// authed authenticates the request and hands the user to h. The user comes
// from the token only, never from the request, so nobody reads another
// user's progress.
func (s *Server) authed(h func(c *fiber.Ctx, userID string) error) fiber.Handler {
	return func(c *fiber.Ctx) error {
		tok, ok := bearer(c)
		if !ok {
			return keepwatch.Errorf(keepwatch.EUNAUTHORIZED, "an Authorization: Bearer token is required")
		}
		user, err := s.deps.Verifier.Verify(tok)
		if err != nil {
			return err
		}
		return h(c, user)
	}
}

func (s *Server) getKeepWatching(c *fiber.Ctx, userID string) error {
	limit := DefaultLimit
	if v := c.Query("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxLimit {
			return invalid("limit", fmt.Sprintf("must be an integer from 1 to %d", MaxLimit))
		}
		limit = n
	}
	res, err := s.reader.keepWatching(c.UserContext(), userID, limit)
	if err != nil {
		return err
	}
	return s.send(c, res, appendItems(make([]byte, 0, 64+len(res.items)*itemSize), res.items))
}

func (s *Server) getProgressBatch(c *fiber.Ctx, userID string) error {
	raw := c.Query("video_ids")
	if raw == "" {
		return invalid("video_ids", "is required: a comma-separated list of video ids")
	}
	if n := strings.Count(raw, ",") + 1; n > MaxVideoIDs {
		return invalid("video_ids", fmt.Sprintf("holds %d ids, at most %d are allowed", n, MaxVideoIDs))
	}
	ids := make([]string, 0, strings.Count(raw, ",")+1)
	for id := range strings.SplitSeq(raw, ",") {
		if !keepwatch.ValidVideoID([]byte(id)) {
			return invalid("video_ids", fmt.Sprintf("%q is not a video id: 1–%d characters of [A-Za-z0-9._:-]", truncate(id), keepwatch.MaxVideoIDLen))
		}
		if !containsString(ids, id) {
			// Copied: fiber reuses the request's memory after the handler.
			ids = append(ids, strings.Clone(id))
		}
	}
	res, err := s.reader.progress(c.UserContext(), userID, ids)
	if err != nil {
		return err
	}
	return s.send(c, res, appendItems(make([]byte, 0, 64+len(res.items)*itemSize), res.items))
}

func (s *Server) getProgressOne(c *fiber.Ctx, userID string) error {
	id := c.Params("video_id")
	if !keepwatch.ValidVideoID([]byte(id)) {
		return invalid("video_id", fmt.Sprintf("must be 1–%d characters of [A-Za-z0-9._:-]", keepwatch.MaxVideoIDLen))
	}
	res, err := s.reader.progress(c.UserContext(), userID, []string{strings.Clone(id)})
	if err != nil {
		return err
	}
	if len(res.items) == 0 {
		if res.overlayFailed {
			c.Set(OverlayHeader, "unavailable")
		}
		return keepwatch.Errorf(keepwatch.ENOTFOUND, "no progress for video %s", id)
	}
	return s.send(c, res, appendItem(make([]byte, 0, itemSize), res.items[0]))
}

func containsString(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

func invalid(field, detail string) error {
	return &keepwatch.Error{
		Code:    keepwatch.EINVALID,
		Message: "the query is invalid",
		Fields:  []keepwatch.FieldError{{Field: field, Detail: detail}},
	}
}

// send writes a 200 JSON answer with its ETag, or 304 when the client holds
// it already. The ETag is a hash of the body, so a poll of unchanged
// progress costs the client no transfer and no parsing.
func (s *Server) send(c *fiber.Ctx, res result, body []byte) error {
	if res.overlayFailed {
		c.Set(OverlayHeader, "unavailable")
	}
	var tag [2 + 16]byte
	tag[0], tag[17] = '"', '"'
	var sum [8]byte
	h := xxhash.Sum64(body)
	for i := range sum {
		sum[i] = byte(h >> (56 - 8*i))
	}
	hex.Encode(tag[1:17], sum[:])
	c.Response().Header.SetBytesV(fiber.HeaderETag, tag[:])
	c.Set(fiber.HeaderCacheControl, "private, no-cache")
	c.Set(fiber.HeaderVary, "Authorization")
	if inm := c.Request().Header.Peek(fiber.HeaderIfNoneMatch); len(inm) > 0 && etagMatches(inm, tag[:]) {
		s.metrics.notModified.Inc()
		c.Status(fiber.StatusNotModified)
		return nil
	}
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	return c.Send(body)
}

// etagMatches applies If-None-Match's weak comparison (RFC 9110 13.1.2): a
// list of entity tags or "*", W/ prefixes ignored.
func etagMatches(header, tag []byte) bool {
	for part := range bytes.SplitSeq(header, []byte(",")) {
		part = bytes.TrimSpace(part)
		if len(part) == 1 && part[0] == '*' {
			return true
		}
		part = bytes.TrimPrefix(part, []byte("W/"))
		if bytes.Equal(part, tag) {
			return true
		}
	}
	return false
}

// itemSize is about the size of one encoded item, to size buffers.
const itemSize = 128

// appendItems writes {"items":[...]}. Hand-written: it is the hot path, and
// every field is a number or a video id, which needs no escaping.
func appendItems(b []byte, items []keepwatch.Progress) []byte {
	b = append(b, `{"items":[`...)
	for i, p := range items {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendItem(b, p)
	}
	return append(b, "]}"...)
}

// appendItem writes one item; position and duration are omitted when the
// player did not send them, updated_at is the event time in RFC 3339 (UTC, ms).
func appendItem(b []byte, p keepwatch.Progress) []byte {
	b = append(b, `{"video_id":"`...)
	b = append(b, p.VideoID...)
	b = append(b, `","percent":`...)
	b = appendMillis(b, p.Percent)
	if p.Position >= 0 {
		b = append(b, `,"position":`...)
		b = appendMillis(b, p.Position)
	}
	if p.Duration >= 0 {
		b = append(b, `,"duration":`...)
		b = appendMillis(b, p.Duration)
	}
	b = append(b, `,"updated_at":"`...)
	b = appendTime(b, p.EventTime)
	return append(b, `"}`...)
}

// appendMillis writes a non-negative number kept to three decimals (every
// stored percent and second is, see keepwatch.Round3) as strconv's shortest
// form would, about five times faster: 42.5, 0.001, 2700.
func appendMillis(b []byte, v float64) []byte {
	m := int64(math.Round(v * 1000))
	b = strconv.AppendInt(b, m/1000, 10)
	frac := m % 1000
	if frac == 0 {
		return b
	}
	digits := [3]byte{byte('0' + frac/100), byte('0' + frac/10%10), byte('0' + frac%10)}
	n := 3
	for digits[n-1] == '0' {
		n--
	}
	b = append(b, '.')
	return append(b, digits[:n]...)
}

// appendTime writes ms since the epoch as RFC 3339 in UTC with milliseconds
// (2024-11-22T01:46:40.000Z), without time.Format's layout parsing.
func appendTime(b []byte, ms int64) []byte {
	t := time.UnixMilli(ms).UTC()
	y, mo, d := t.Date()
	h, mi, s := t.Clock()
	b = appendPad(b, y, 4)
	b = append(b, '-')
	b = appendPad(b, int(mo), 2)
	b = append(b, '-')
	b = appendPad(b, d, 2)
	b = append(b, 'T')
	b = appendPad(b, h, 2)
	b = append(b, ':')
	b = appendPad(b, mi, 2)
	b = append(b, ':')
	b = appendPad(b, s, 2)
	b = append(b, '.')
	b = appendPad(b, t.Nanosecond()/1e6, 3)
	return append(b, 'Z')
}

func appendPad(b []byte, v, width int) []byte {
	for p := 10; width > 1; width-- {
		if v < p {
			b = append(b, '0')
		}
		p *= 10
	}
	return strconv.AppendInt(b, int64(v), 10)
}
