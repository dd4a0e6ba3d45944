package query_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/keepwatch/keepwatch"
	"github.com/keepwatch/keepwatch/internal/auth"
	"github.com/keepwatch/keepwatch/internal/edge"
	"github.com/keepwatch/keepwatch/internal/testenv"
	"github.com/keepwatch/keepwatch/migrations"
	"github.com/keepwatch/keepwatch/query"
	kwmongo "github.com/keepwatch/keepwatch/storage/mongo"
	"github.com/keepwatch/keepwatch/storage/redisbuf"
)

const secret = "query-test-secret"

// env is a query service on a real redis-server and a real MongoDB-protocol
// server, with helpers to seed both.
type env struct {
	t      testing.TB
	app    *fiber.App
	shell  *edge.Shell
	srv    *query.Server
	reg    *prometheus.Registry
	redis  *testenv.Redis
	mongo  *testenv.Mongo
	store  *kwmongo.Store
	reader *kwmongo.Reader
	buf    *redisbuf.Buffer
}

// setup configures an env before it is built.
type setup struct {
	cfg  query.Config
	edge edge.Config
}

type envOption func(*setup)

func newEnv(t testing.TB, opts ...envOption) *env {
	t.Helper()
	return newEnvWithMongo(t, testenv.StartMongo(t), 5*time.Second, opts...)
}

// newEnvWithMongo uses m, each MongoDB operation bounded by timeout.
func newEnvWithMongo(t testing.TB, m *testenv.Mongo, timeout time.Duration, opts ...envOption) *env {
	t.Helper()
	e := &env{t: t, redis: testenv.StartRedis(t), mongo: m, reg: prometheus.NewRegistry()}
	ctx := context.Background()
	store, err := kwmongo.Open(ctx, kwmongo.Options{URI: m.URI, Database: m.Database, Timeout: timeout, AppName: "query-test"})
	if err != nil {
		t.Fatalf("open mongo: %v", err)
	}
	t.Cleanup(func() { _ = store.Close(context.Background()) })
	e.store = store
	// Migrate with a generous timeout: a test's short one is for its reads,
	// and a loaded machine may take longer to build an index.
	mig, err := kwmongo.Open(ctx, kwmongo.Options{URI: m.URI, Database: m.Database, Timeout: time.Minute})
	if err != nil {
		t.Fatalf("open mongo: %v", err)
	}
	err = migrations.Up(ctx, mig.Database(), slog.New(slog.DiscardHandler))
	_ = mig.Close(ctx)
	if err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if e.reader, err = store.Reader(kwmongo.ReadOptions{}); err != nil {
		t.Fatal(err)
	}
	// No retries: a stopped Redis must fail fast, not after backoff.
	rc := redis.NewClient(&redis.Options{Addr: e.redis.Addr, MaxRetries: -1, DialerRetries: 1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = rc.Close() })
	if e.buf, err = redisbuf.New(rc, redisbuf.Options{Shards: 4}); err != nil {
		t.Fatal(err)
	}
	verifier, err := auth.NewVerifier([]string{secret}, 1000)
	if err != nil {
		t.Fatal(err)
	}
	// No rate limit unless a test sets one: tests read as one user in a
	// loop.
	s := setup{cfg: query.Config{Overlay: true}, edge: query.DefaultEdge()}
	s.edge.Rate.Limit = 0
	for _, o := range opts {
		o(&s)
	}
	// As cmd/keepwatch does: the service label comes from the registerer.
	sreg := prometheus.WrapRegistererWith(prometheus.Labels{"service": "query"}, e.reg)
	e.shell, err = edge.New(s.edge, edge.Deps{Verifier: verifier, Ready: store.Ping, Registerer: sreg, Gatherer: e.reg,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	e.srv, err = query.New(s.cfg, e.shell, query.Deps{Store: e.reader, Export: e.reader, Pending: e.buf}, sreg)
	if err != nil {
		t.Fatal(err)
	}
	e.app = e.shell.App()
	return e
}

// listen serves the service on a local port until the test ends and returns
// its address, for requests that must cross a real connection.
func (e *env) listen() string { return testenv.ServeLocal(e.t, e.shell) }

// store writes a progress document of the documented shape, as the flusher
// does; a state without completed, episode or series is written as the
// release before them wrote it, without c, e and sr, so every test also
// reads documents of the previous release.
func (e *env) stored(user, video string, st keepwatch.State) {
	e.t.Helper()
	s := bson.D{
		{Key: "t", Value: st.EventTime},
		{Key: "k", Value: int32(st.Kind)},
		{Key: "p", Value: st.Percent},
		{Key: "pos", Value: st.Position},
		{Key: "dur", Value: st.Duration},
	}
	if st.Completed || st.Episode != keepwatch.Unknown || st.SeriesID != "" {
		s = append(s, bson.E{Key: "c", Value: st.Completed}, bson.E{Key: "e", Value: st.Episode}, bson.E{Key: "sr", Value: st.SeriesID})
	}
	doc := bson.D{
		{Key: "_id", Value: keepwatch.ID(user, video)},
		{Key: "u", Value: user},
		{Key: "v", Value: video},
		{Key: "s", Value: s},
	}
	_, err := e.store.Database().Collection(kwmongo.ProgressCollection).ReplaceOne(context.Background(),
		bson.D{{Key: "_id", Value: keepwatch.ID(user, video)}}, doc, options.Replace().SetUpsert(true))
	if err != nil {
		e.t.Fatalf("store %s/%s: %v", user, video, err)
	}
}

// pend puts an entry in the Redis buffer, as the command side does.
func (e *env) pend(user, video string, st keepwatch.State) {
	e.t.Helper()
	per, err := e.buf.Apply(context.Background(), []redisbuf.Write{{UserID: user, Entries: []redisbuf.Entry{{VideoID: video, State: st}}}})
	if err != nil || per[0] != nil {
		e.t.Fatalf("pend %s/%s: %v %v", user, video, err, per)
	}
}

func token(t testing.TB, user string) string {
	t.Helper()
	tok, err := auth.Mint(secret, user, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// get sends a GET as user ("" for no token) with extra headers.
func (e *env) get(user, path string, headers ...string) *http.Response {
	e.t.Helper()
	req := httptest.NewRequest(http.MethodGet, path, nil)
	if user != "" {
		req.Header.Set("Authorization", "Bearer "+token(e.t, user))
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := e.app.Test(req, 10_000)
	if err != nil {
		e.t.Fatalf("GET %s: %v", path, err)
	}
	e.t.Cleanup(func() { _ = resp.Body.Close() })
	return resp
}

type item struct {
	VideoID   string   `json:"video_id"`
	SeriesID  string   `json:"series_id"`
	Episode   *float64 `json:"episode"`
	Percent   float64  `json:"percent"`
	Position  *float64 `json:"position"`
	Duration  *float64 `json:"duration"`
	Finished  *bool    `json:"finished"`
	UpdatedAt string   `json:"updated_at"`
}

type items struct {
	Items []item `json:"items"`
}

func decode[T any](t testing.TB, resp *http.Response, wantStatus int) T {
	t.Helper()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != wantStatus {
		t.Fatalf("status %d, want %d: %s", resp.StatusCode, wantStatus, body)
	}
	var v T
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	return v
}

func ids(is items) string {
	var s []string
	for _, i := range is.Items {
		s = append(s, fmt.Sprintf("%s:%g", i.VideoID, i.Percent))
	}
	return strings.Join(s, " ")
}

// at is progress at event time t (ms) with percent p, position and duration known.
func at(t int64, p float64) keepwatch.State {
	return keepwatch.State{EventTime: t, Percent: p, Position: p * 10, Duration: 1000, Episode: keepwatch.Unknown}
}

func deleted(t int64) keepwatch.State {
	return keepwatch.State{EventTime: t, Kind: keepwatch.KindDeleted, Position: keepwatch.Unknown, Duration: keepwatch.Unknown, Episode: keepwatch.Unknown}
}

// episode is at for an episode of a series.
func episode(t int64, p float64, series string, n float64) keepwatch.State {
	s := at(t, p)
	s.SeriesID, s.Episode = series, n
	return s
}

// base is an event time in the past so every ordering below is explicit.
const base = int64(1_732_240_000_000)
