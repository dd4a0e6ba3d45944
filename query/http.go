package query

import (
	"bytes"
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
	// FinishedThreshold is the percent at or above which a video is
	// finished and leaves keep-watching; 95 when 0.
	FinishedThreshold float64
	// Overlay merges the user's pending Redis entries into every answer
	// (read-your-writes). Without it, answers lag by up to a flush interval.
	Overlay bool
	// OverlayTimeout bounds the Redis read of an answer; 250ms when 0.
	OverlayTimeout time.Duration
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
	// Pending is the Redis buffer; used when Config.Overlay is set.
	Pending Pending
}

// Server is the query service's routes.
type Server struct {
	shell   *edge.Shell
	reader  *reader
	metrics *metrics
}

var errTooFast = &keepwatch.Error{Code: keepwatch.ERATELIMITED, RetryAfter: 1,
	Message: "too many requests for this user; a page of thumbnails needs one GET /v1/progress?video_ids= per row"}

// New adds the query API's routes to shell, registering its metrics on reg.
func New(cfg Config, shell *edge.Shell, deps Deps, reg prometheus.Registerer) (*Server, error) {
	if shell == nil || deps.Store == nil || reg == nil {
		return nil, errors.New("query service: shell, Store and registerer are required")
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
	s := &Server{shell: shell, metrics: newMetrics(reg)}
	pending := deps.Pending
	if !cfg.Overlay {
		pending = nil
	}
	s.reader = &reader{store: deps.Store, pending: pending, threshold: cfg.FinishedThreshold,
		overlayTimeout: cfg.OverlayTimeout, metrics: s.metrics}
	shell.Handle(fiber.MethodGet, "/v1/keep-watching", fiber.StatusOK, s.authed(s.getKeepWatching))
	shell.Handle(fiber.MethodGet, "/v1/progress", fiber.StatusOK, s.authed(s.getProgressBatch))
	shell.Handle(fiber.MethodGet, "/v1/progress/:video_id", fiber.StatusOK, s.authed(s.getProgressOne))
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
