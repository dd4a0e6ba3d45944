// Package naive is the hand-written service keepwatch replaces: the same API,
// auth and validation, but each request parses its token with golang-jwt,
// decodes its body with encoding/json and makes one synchronous write to the
// store before it answers. It is a baseline for benchmarks, kept honest: it
// does the same work per request, just without keepwatch's shortcuts.
package naive

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/golang-jwt/jwt/v5"
)

// Item is one video's progress as the query API returns it.
type Item struct {
	VideoID   string  `json:"video_id"`
	Percent   float64 `json:"percent"`
	Position  float64 `json:"position,omitempty"`
	Duration  float64 `json:"duration,omitempty"`
	UpdatedAt int64   `json:"updated_at"`
	deleted   bool
}

// Store is where the naive service writes, one call per event.
type Store interface {
	// Put keeps it unless the stored item of (user, it.VideoID) is newer.
	Put(ctx context.Context, user string, it Item, deleted bool) error
	// List returns every item of user, tombstones included (deleted set).
	List(ctx context.Context, user string) ([]Item, error)
}

type event struct {
	VideoID  string   `json:"video_id"`
	Percent  *float64 `json:"percent"`
	Position float64  `json:"position"`
	Duration float64  `json:"duration"`
	TS       int64    `json:"ts"`
	SentAt   int64    `json:"sent_at"`
}

type batch struct {
	SentAt int64   `json:"sent_at"`
	Events []event `json:"events"`
}

var videoIDPattern = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

// Server holds the naive service's dependencies.
type Server struct {
	store   Store
	secrets [][]byte
	timeout time.Duration
}

// New returns the naive service's app writing to store, accepting tokens
// signed with any of secrets.
func New(store Store, secrets []string) *fiber.App {
	s := &Server{store: store, timeout: 2 * time.Second}
	for _, sec := range secrets {
		s.secrets = append(s.secrets, []byte(sec))
	}
	app := fiber.New(fiber.Config{DisableStartupMessage: true})
	app.Post("/v1/progress", s.post)
	app.Post("/v1/progress/batch", s.postBatch)
	app.Delete("/v1/progress/:video_id", s.delete)
	app.Get("/v1/keep-watching", s.keepWatching)
	app.Get("/v1/progress/:video_id", s.getOne)
	ok := func(c *fiber.Ctx) error { return c.SendStatus(fiber.StatusOK) }
	app.Get("/healthz", ok)
	app.Get("/readyz", ok)
	return app
}

func problem(c *fiber.Ctx, status int, detail string) error {
	c.Set(fiber.HeaderContentType, "application/problem+json")
	return c.Status(status).SendString(fmt.Sprintf(`{"status":%d,"detail":%q}`, status, detail))
}

// user parses and verifies the bearer token, as a typical service does on
// every request.
func (s *Server) user(c *fiber.Ctx) (string, error) {
	raw, ok := strings.CutPrefix(c.Get(fiber.HeaderAuthorization), "Bearer ")
	if !ok {
		return "", errors.New("missing bearer token")
	}
	var lastErr error
	for _, sec := range s.secrets {
		tok, err := jwt.Parse(raw, func(*jwt.Token) (any, error) { return sec, nil },
			jwt.WithValidMethods([]string{"HS256"}), jwt.WithExpirationRequired())
		if err != nil {
			lastErr = err
			continue
		}
		sub, err := tok.Claims.GetSubject()
		if err != nil || sub == "" {
			return "", errors.New("token without sub")
		}
		return sub, nil
	}
	return "", lastErr
}

func (s *Server) item(ev event, sentAt int64, now time.Time) (Item, error) {
	if !videoIDPattern.MatchString(ev.VideoID) {
		return Item{}, errors.New("video_id: 1-128 characters of [A-Za-z0-9._:-]")
	}
	if ev.Percent == nil || *ev.Percent < 0 || *ev.Percent > 100 {
		return Item{}, errors.New("percent: 0-100 required")
	}
	if ev.SentAt != 0 {
		sentAt = ev.SentAt
	}
	age := int64(0)
	if ev.TS > 0 && sentAt > 0 {
		age = min(max(sentAt-ev.TS, 0), int64(7*24*time.Hour/time.Millisecond))
	}
	return Item{VideoID: ev.VideoID, Percent: *ev.Percent, Position: ev.Position, Duration: ev.Duration,
		UpdatedAt: now.UnixMilli() - age}, nil
}

func (s *Server) post(c *fiber.Ctx) error {
	user, err := s.user(c)
	if err != nil {
		return problem(c, fiber.StatusUnauthorized, "invalid token")
	}
	var ev event
	if err := json.Unmarshal(c.Body(), &ev); err != nil {
		return problem(c, fiber.StatusBadRequest, "malformed JSON")
	}
	it, err := s.item(ev, 0, time.Now())
	if err != nil {
		return problem(c, fiber.StatusUnprocessableEntity, err.Error())
	}
	ctx, cancel := context.WithTimeout(c.UserContext(), s.timeout)
	defer cancel()
	if err := s.store.Put(ctx, user, it, false); err != nil {
		return problem(c, fiber.StatusServiceUnavailable, "store unavailable")
	}
	return c.SendStatus(fiber.StatusAccepted)
}

func (s *Server) postBatch(c *fiber.Ctx) error {
	user, err := s.user(c)
	if err != nil {
		return problem(c, fiber.StatusUnauthorized, "invalid token")
	}
	var b batch
	if err := json.Unmarshal(c.Body(), &b); err != nil {
		return problem(c, fiber.StatusBadRequest, "malformed JSON")
	}
	if len(b.Events) > 100 {
		return problem(c, fiber.StatusUnprocessableEntity, "at most 100 events")
	}
	now := time.Now()
	ctx, cancel := context.WithTimeout(c.UserContext(), s.timeout)
	defer cancel()
	accepted := 0
	rejected := []map[string]any{}
	for i, ev := range b.Events {
		it, err := s.item(ev, b.SentAt, now)
		if err != nil {
			rejected = append(rejected, map[string]any{"index": i, "detail": err.Error()})
			continue
		}
		if err := s.store.Put(ctx, user, it, false); err != nil {
			return problem(c, fiber.StatusServiceUnavailable, "store unavailable")
		}
		accepted++
	}
	if accepted == 0 && len(b.Events) > 0 {
		return problem(c, fiber.StatusUnprocessableEntity, "no valid event")
	}
	return c.Status(fiber.StatusAccepted).JSON(map[string]any{"accepted": accepted, "rejected": rejected})
}

func (s *Server) delete(c *fiber.Ctx) error {
	user, err := s.user(c)
	if err != nil {
		return problem(c, fiber.StatusUnauthorized, "invalid token")
	}
	id := c.Params("video_id")
	if !videoIDPattern.MatchString(id) {
		return problem(c, fiber.StatusUnprocessableEntity, "invalid video_id")
	}
	ctx, cancel := context.WithTimeout(c.UserContext(), s.timeout)
	defer cancel()
	if err := s.store.Put(ctx, user, Item{VideoID: id, UpdatedAt: time.Now().UnixMilli()}, true); err != nil {
		return problem(c, fiber.StatusServiceUnavailable, "store unavailable")
	}
	return c.SendStatus(fiber.StatusAccepted)
}

func (s *Server) list(c *fiber.Ctx) (string, []Item, error) {
	user, err := s.user(c)
	if err != nil {
		return "", nil, problem(c, fiber.StatusUnauthorized, "invalid token")
	}
	ctx, cancel := context.WithTimeout(c.UserContext(), s.timeout)
	defer cancel()
	items, err := s.store.List(ctx, user)
	if err != nil {
		return "", nil, problem(c, fiber.StatusServiceUnavailable, "store unavailable")
	}
	return user, items, nil
}

func (s *Server) keepWatching(c *fiber.Ctx) error {
	user, items, err := s.list(c)
	if user == "" {
		return err
	}
	limit := c.QueryInt("limit", 20)
	out := make([]Item, 0, len(items))
	for _, it := range items {
		if !it.deleted && it.Percent < 95 {
			out = append(out, it)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].UpdatedAt > out[j].UpdatedAt })
	if len(out) > limit {
		out = out[:limit]
	}
	return c.JSON(map[string]any{"items": out})
}

func (s *Server) getOne(c *fiber.Ctx) error {
	user, items, err := s.list(c)
	if user == "" {
		return err
	}
	id := c.Params("video_id")
	for _, it := range items {
		if it.VideoID == id && !it.deleted {
			return c.JSON(it)
		}
	}
	return problem(c, fiber.StatusNotFound, "no progress")
}
