package query

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/gofiber/fiber/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepwatch/keepwatch"
	"github.com/keepwatch/keepwatch/internal/edge"
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

// OverlayHeader is set to "unavailable" when the answer is MongoDB's alone
// because the Redis buffer could not be read: it may miss progress posted in
// the last flush interval.
const OverlayHeader = "X-Keepwatch-Overlay"

// Config configures the query service.
type Config struct {
	// Rules decide what is finished and what is worth resuming; a zero
	// FinishedPercent is 95.
	Rules keepwatch.Rules
	// MaxAge is how old progress may be and still show in keep watching
	// (0: any age).
	MaxAge time.Duration
	// Overlay merges the user's pending Redis entries into every answer
	// (read-your-writes). Without it, answers lag by up to a flush interval.
	Overlay bool
	// OverlayTimeout bounds the Redis read of an answer; 250ms when 0.
	OverlayTimeout time.Duration
	// ExportTimeout bounds one export, from its first read to its last
	// line; 2m when 0.
	ExportTimeout time.Duration
	// Now is the clock of the age limit and the export; time.Now when nil.
	Now func() time.Time
}

// DefaultEdge returns the documented defaults of the query API's HTTP edge.
func DefaultEdge() edge.Config {
	return edge.Config{
		ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		MaxConns: 50_000,
		// GET /v1/progress?video_ids= with MaxVideoIDs ids of the longest
		// (128 characters) is 13 KB, about 13.2 with the commas percent-
		// encoded; browsers add a few KB of headers.
		MaxHeaderBytes: 32 << 10,
		// Only GET requests: nothing to read.
		BodyLimit: 4 << 10,
		// A frontend's page load is a keep-watching row and a progress
		// lookup per row of thumbnails, or one GET per thumbnail: a page
		// of 50 fits in the burst, a user scrolling on in the rate.
		Rate: edge.RateConfig{Limit: 5, Burst: 60, Users: 1_000_000},
		CORS: edge.CORS{
			Methods: "GET,HEAD",
			Headers: "Authorization,If-None-Match",
			Expose:  "ETag," + OverlayHeader + ",Retry-After",
		},
		Grace: 15 * time.Second,
	}
}

// Deps are what the service reads from.
type Deps struct {
	// Store is MongoDB; required.
	Store Store
	// Export reads a user's whole history from MongoDB; required.
	Export Exporter
	// Pending is the Redis buffer; used when Config.Overlay is set.
	Pending Pending
}

// Server is the query service's routes.
type Server struct {
	shell   *edge.Shell
	reader  *reader
	export  ExportSources
	cfg     Config
	metrics *metrics
}

var errTooFast = &keepwatch.Error{Code: keepwatch.ERATELIMITED, RetryAfter: 1,
	Message: "too many requests for this user; a page of thumbnails needs one GET /v1/progress?video_ids= per row"}

// New adds the query API's routes to shell, registering its metrics on reg.
func New(cfg Config, shell *edge.Shell, deps Deps, reg prometheus.Registerer) (*Server, error) {
	if shell == nil || deps.Store == nil || deps.Export == nil || reg == nil {
		return nil, errors.New("query service: shell, Store, Export and registerer are required")
	}
	if cfg.Overlay && deps.Pending == nil {
		return nil, errors.New("query service: the overlay needs Pending")
	}
	if cfg.Rules.FinishedPercent == 0 {
		cfg.Rules.FinishedPercent = keepwatch.DefaultRules().FinishedPercent
	}
	if err := cfg.Rules.Validate(); err != nil {
		return nil, fmt.Errorf("query service: %w", err)
	}
	if cfg.MaxAge < 0 {
		return nil, errors.New("query service: --keep-watching-max-age must not be negative")
	}
	if cfg.OverlayTimeout <= 0 {
		cfg.OverlayTimeout = 250 * time.Millisecond
	}
	if cfg.ExportTimeout <= 0 {
		cfg.ExportTimeout = 2 * time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Server{shell: shell, cfg: cfg, metrics: newMetrics(reg)}
	pending := deps.Pending
	if !cfg.Overlay {
		pending = nil
	}
	s.reader = &reader{store: deps.Store, pending: pending, rules: cfg.Rules, maxAge: cfg.MaxAge, now: cfg.Now,
		overlayTimeout: cfg.OverlayTimeout, metrics: s.metrics}
	s.export = ExportSources{Store: deps.Store, Export: deps.Export, Pending: pending}
	shell.Handle(fiber.MethodGet, "/v1/keep-watching", fiber.StatusOK, s.authed(s.getKeepWatching))
	shell.Handle(fiber.MethodGet, "/v1/progress", fiber.StatusOK, s.authed(s.getProgressBatch))
	shell.Handle(fiber.MethodGet, "/v1/progress/:video_id", fiber.StatusOK, s.authed(s.getProgressOne))
	shell.Handle(fiber.MethodGet, "/v1/export", fiber.StatusOK, s.authed(s.getExport))
	return s, nil
}

// authed authenticates and rate-limits the request and hands the user to h.
// The user comes from the token only, never from the request, so nobody
// reads another user's progress.
func (s *Server) authed(h func(c *fiber.Ctx, userID string) error) edge.Handler {
	return func(c *fiber.Ctx, recv time.Time) error {
		user, b, err := s.shell.User(c, recv)
		if err != nil {
			return err
		}
		// Every answer reads MongoDB: one token must not make it scan in
		// a loop.
		if !s.shell.Allow(b, recv) {
			return errTooFast
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
	group := true
	switch v := c.Query("group"); v {
	case "", "series":
	case "none":
		group = false
	default:
		return invalid("group", "must be series (one item per series, the default) or none (one per video)")
	}
	res, err := s.reader.keepWatching(c.UserContext(), userID, limit, group)
	if err != nil {
		return err
	}
	return s.send(c, res, s.appendItems(make([]byte, 0, 64+len(res.items)*itemSize), res.items))
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
	return s.send(c, res, s.appendItems(make([]byte, 0, 64+len(res.items)*itemSize), res.items))
}

func (s *Server) getProgressOne(c *fiber.Ctx, userID string) error {
	id := edge.Param(c, "video_id")
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
	return s.send(c, res, s.appendItem(make([]byte, 0, itemSize), res.items[0]))
}

// getExport streams everything keepwatch holds of the user as NDJSON. What
// can fail as a whole (a store unreachable) fails before the first byte, as
// a problem; a failure mid-stream ends the stream without its end line.
func (s *Server) getExport(c *fiber.Ctx, userID string) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ExportTimeout)
	x, err := PrepareExport(ctx, s.export, s.reader.rules, userID, s.cfg.Now())
	if err != nil {
		cancel()
		return s.reader.storeError(err)
	}
	c.Set(fiber.HeaderContentType, "application/x-ndjson")
	c.Set(fiber.HeaderCacheControl, "private, no-store")
	c.Set(fiber.HeaderContentDisposition, `attachment; filename="keepwatch-export.ndjson"`)
	c.Status(fiber.StatusOK)
	// The body is written after the handler returns, as the cursors yield
	// it: constant memory whatever the history.
	c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		defer cancel()
		if _, err := x.WriteTo(ctx, w); err != nil {
			s.metrics.exportErrors.Inc()
		}
	})
	return nil
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
// every field is a number or an id of a fixed alphabet, which needs no
// escaping.
func (s *Server) appendItems(b []byte, items []keepwatch.Progress) []byte {
	b = append(b, `{"items":[`...)
	for i, p := range items {
		if i > 0 {
			b = append(b, ',')
		}
		b = s.appendItem(b, p)
	}
	return append(b, "]}"...)
}

// appendItem writes one item, with what the rules decided of it.
func (s *Server) appendItem(b []byte, p keepwatch.Progress) []byte {
	b = append(b, '{')
	b = appendItemFields(b, p, s.reader.rules.Finished(p.State))
	return append(b, '}')
}

// appendItemFields writes an item's fields: series_id, episode, position and
// duration are omitted when the player did not send them, finished is the
// rules' verdict, updated_at is the event time in RFC 3339 (UTC, ms).
func appendItemFields(b []byte, p keepwatch.Progress, finished bool) []byte {
	b = append(b, `"video_id":"`...)
	b = append(b, p.VideoID...)
	b = append(b, '"')
	if p.SeriesID != "" {
		b = append(b, `,"series_id":"`...)
		b = append(b, p.SeriesID...)
		b = append(b, '"')
	}
	if p.Episode >= 0 {
		b = append(b, `,"episode":`...)
		b = appendMillis(b, p.Episode)
	}
	b = append(b, `,"percent":`...)
	b = appendMillis(b, p.Percent)
	if p.Position >= 0 {
		b = append(b, `,"position":`...)
		b = appendMillis(b, p.Position)
	}
	if p.Duration >= 0 {
		b = append(b, `,"duration":`...)
		b = appendMillis(b, p.Duration)
	}
	if finished {
		b = append(b, `,"finished":true`...)
	} else {
		b = append(b, `,"finished":false`...)
	}
	b = append(b, `,"updated_at":"`...)
	b = appendTime(b, p.EventTime)
	return append(b, '"')
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
