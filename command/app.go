// Package command is the write side of keepwatch: the HTTP API players post
// progress to, and the group commit that stores it in the buffer. It never
// talks to MongoDB; the flusher (command/flush) does.
package command

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepwatch/keepwatch"
	"github.com/keepwatch/keepwatch/internal/edge"
)

// Buffer is what the command side needs of the Redis buffer.
type Buffer interface {
	Applier
	// Erase records the erase of everything the user has up to the event
	// time at (ms), atomically with their pending entries, and returns how
	// many pending entries it dropped. Errors wrap keepwatch.ErrUnavailable.
	Erase(ctx context.Context, userID string, at int64) (int, error)
}

// Config holds the command API's bounds; every field has a flag in cmd/keepwatch.
type Config struct {
	BatchMaxEvents int
	// MaxJSONDepth bounds how deep objects and arrays nest in a body. JSON
	// libraries stop at different depths (Python at about 1,000, fastjson at
	// 300), so a body nested deeper means nothing to some of them.
	MaxJSONDepth int
	MaxEventAge  time.Duration
	Commit       CommitConfig
	HighWater    int64 // for the metric; the buffer enforces it
}

// MaxJSONDepth is the largest Config.MaxJSONDepth: fastjson, which reads the
// bodies, counts every value of a path and stops past 300.
const MaxJSONDepth = 256

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		BatchMaxEvents: 100, MaxJSONDepth: 32, MaxEventAge: 7 * 24 * time.Hour,
		Commit: CommitConfig{MaxBatch: 256, Workers: 2, Queue: 8192, Timeout: 2 * time.Second},
	}
}

// DefaultEdge returns the documented defaults of the command API's HTTP edge.
func DefaultEdge() edge.Config {
	return edge.Config{
		// There is no write timeout: every answer fits in the socket
		// buffer, and a deadline per response showed in the profile.
		ReadTimeout: 30 * time.Second, IdleTimeout: 120 * time.Second,
		MaxConns: 50_000,
		// Browsers send a kilobyte or two of headers, more with the
		// cookies of a site the API shares a domain with.
		MaxHeaderBytes: 8 << 10,
		BodyLimit:      64 << 10,
		// A player posts every 10 s; the burst covers an offline batch
		// and a retry or two.
		Rate: edge.RateConfig{Limit: 1, Burst: 20, Users: 1_000_000},
		CORS: edge.CORS{
			Methods: "POST,DELETE",
			Headers: "Authorization,Content-Type",
			Expose:  "Retry-After",
		},
		Grace: 15 * time.Second,
	}
}

// Routes, as they label the latency histogram.
const (
	routeProgress = "/v1/progress"
	routeBatch    = "/v1/progress/batch"
	routeOne      = "/v1/progress/{video_id}"
)

// Service is the command API's routes and their group commit.
type Service struct {
	cfg    Config
	shell  *edge.Shell
	buf    Buffer
	commit *committer
	// decoders holds *decoder: the full parser's memory, reused.
	decoders sync.Pool
	m        *metrics
	log      *slog.Logger
	closed   sync.Once
}

// Validate checks the bounds, naming the flag to fix.
func (cfg Config) Validate() error {
	switch {
	case cfg.BatchMaxEvents <= 0:
		return errors.New("--batch-max-events must be positive")
	case cfg.MaxJSONDepth < 3 || cfg.MaxJSONDepth > MaxJSONDepth:
		return fmt.Errorf("--max-json-depth must be from 3 (a batch's events nest 3 deep) to %d", MaxJSONDepth)
	case cfg.MaxEventAge < 0:
		return errors.New("--max-event-age must not be negative")
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
	}
	return nil
}

// New adds the command API's routes to shell and starts the group commit on
// buf (stop it with Close), registering its metrics on reg.
func New(cfg Config, shell *edge.Shell, buf Buffer, reg prometheus.Registerer, log *slog.Logger) (*Service, error) {
	if shell == nil || buf == nil || reg == nil || log == nil {
		return nil, errors.New("command: shell, buffer, registry and logger are required")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("command: %w", err)
	}
	s := &Service{cfg: cfg, shell: shell, buf: buf, m: newMetrics(reg), log: log}
	s.decoders.New = func() any { return &decoder{maxDepth: cfg.MaxJSONDepth} }
	s.commit = newCommitter(cfg.Commit, buf, func(n int, d time.Duration) {
		s.m.commitSize.Observe(float64(n))
		s.m.commitDur.Observe(d.Seconds())
	})
	s.m.highWater.Set(float64(cfg.HighWater))
	shell.Handle(fiber.MethodPost, "/v1/progress", fiber.StatusAccepted, s.postProgress)
	shell.Handle(fiber.MethodPost, "/v1/progress/batch", fiber.StatusAccepted, s.postBatch)
	shell.Handle(fiber.MethodDelete, "/v1/progress/:video_id", fiber.StatusAccepted, s.deleteProgress)
	shell.Handle(fiber.MethodDelete, "/v1/progress", fiber.StatusAccepted, s.eraseProgress)
	// Count every refused write by reason, those refused before their
	// handler ran (a body over the limit) included.
	shell.OnError(func(route string, err error) {
		switch route {
		case routeProgress, routeBatch, routeOne:
			s.m.reject(err)
		}
	})
	return s, nil
}

var (
	errNotJSON = keepwatch.Errorf(keepwatch.EUNSUPPORTED, "the body must be application/json")
	errTooFast = &keepwatch.Error{Code: keepwatch.ERATELIMITED, RetryAfter: 1, Message: "too many requests for this user; players post every 10 s"}
)

func isJSON(c *fiber.Ctx) bool {
	ct := c.Request().Header.ContentType()
	if i := bytes.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	ct = bytes.TrimSpace(ct)
	return bytes.EqualFold(ct, []byte(fiber.MIMEApplicationJSON))
}

// admit runs the checks every write shares: token, content type, rate.
func (s *Service) admit(c *fiber.Ctx, recv time.Time, needBody bool) (string, error) {
	user, b, err := s.shell.User(c, recv)
	if err != nil {
		return "", err
	}
	if needBody && !isJSON(c) {
		return "", errNotJSON
	}
	if !s.shell.Allow(b, recv) {
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
		// The ids point into Fiber's reused request memory: copy them.
		entry = ev.entry()
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
	for i := range res.events {
		entries[i] = res.events[i].entry()
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
	video := edge.Param(c, "video_id")
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
		Kind:      keepwatch.KindDeleted, Position: keepwatch.Unknown, Duration: keepwatch.Unknown, Episode: keepwatch.Unknown,
	}
	// The video id may point into Fiber's reused request memory: copy it.
	if err := s.commit.submitOne(user, keepwatch.Entry{VideoID: strings.Clone(video), State: st}); err != nil {
		return err
	}
	s.m.accepted.Inc()
	return acceptOne(c)
}

// eraseProgress erases all of the user's progress up to its event time (the
// receive time, or the age the device measured with ?ts=&sent_at=): it is
// recorded in the buffer atomically with the user's pending entries, and the
// flusher applies it to MongoDB and the dead letters (see
// keepwatch.KindErased). It is not on the players' hot path, so it goes to
// Redis on its own rather than through the group commit.
func (s *Service) eraseProgress(c *fiber.Ctx, recv time.Time) error {
	user, err := s.admit(c, recv, false)
	if err != nil {
		return err
	}
	var errs []keepwatch.FieldError
	ts, sentAt := queryMillis(c, "ts", &errs), queryMillis(c, "sent_at", &errs)
	if len(errs) > 0 {
		return &keepwatch.Error{Code: keepwatch.EINVALID, Message: "the erase has invalid fields", Fields: errs}
	}
	at := keepwatch.EventTime(recv, ts, sentAt, s.cfg.MaxEventAge)
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Commit.Timeout)
	defer cancel()
	if _, err := s.buf.Erase(ctx, user, at); err != nil {
		return &keepwatch.Error{Code: keepwatch.EUNAVAILABLE, RetryAfter: 1, Message: "the buffer is unreachable; retry shortly", Err: err}
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

// Close stops the group commit once every queued write is answered; writes
// arriving later get 503. Call it after the shell has shut down, so that the
// requests in flight are answered.
func (s *Service) Close() {
	s.closed.Do(s.commit.close)
}
