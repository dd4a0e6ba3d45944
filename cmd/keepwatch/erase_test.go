package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"
	mgo "go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/keepwatch/keepwatch"
	"github.com/keepwatch/keepwatch/internal/auth"
	"github.com/keepwatch/keepwatch/internal/testenv"
	"github.com/keepwatch/keepwatch/migrations"
	"github.com/keepwatch/keepwatch/storage/mongo"
	"github.com/keepwatch/keepwatch/storage/redisbuf"
)

// eraseEnv is a command API with its flusher and a query API, on a real
// Redis and MongoDB-protocol server, run through Main.
type eraseEnv struct {
	t              *testing.T
	redis          *testenv.Redis
	mongo          *testenv.Mongo
	store          *mongo.Store
	command, query string
	secret         string
}

func newEraseEnv(t *testing.T) *eraseEnv {
	t.Helper()
	e := &eraseEnv{t: t, redis: testenv.StartRedis(t), mongo: testenv.StartMongo(t), secret: "erase-secret"}
	common := []string{"--redis-url", e.redis.URL(), "--mongo-uri", e.mongo.URI, "--mongo-db", e.mongo.Database, "--migrate",
		"--auth-secret", e.secret, "--rate-limit", "0", "--shutdown-grace", "2s"}
	e.command = startService(t, append([]string{"command", "--flush-interval", "100ms"}, common...)...)
	e.query = startService(t, append([]string{"query"}, common...)...)
	ctx := context.Background()
	var err error
	e.store, err = mongo.Open(ctx, mongo.Options{URI: e.mongo.URI, Database: e.mongo.Database, Timeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.store.Close(context.Background()) })
	if err := migrations.Check(ctx, e.store.Database()); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *eraseEnv) token(user string) string {
	e.t.Helper()
	tok, err := auth.Mint(e.secret, user, time.Hour)
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

// do sends a request as user and returns the status and body.
func (e *eraseEnv) do(method, url, user, body string) (int, string) {
	e.t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+e.token(user))
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (e *eraseEnv) post(user, body string) {
	e.t.Helper()
	if code, b := e.do(http.MethodPost, e.command+"/v1/progress", user, body); code != http.StatusAccepted {
		e.t.Fatalf("POST %s: %d %s", body, code, b)
	}
}

// row is the user's keep-watching row, as video ids, newest first.
func (e *eraseEnv) row(user string) string {
	e.t.Helper()
	code, b := e.do(http.MethodGet, e.query+"/v1/keep-watching?group=none", user, "")
	if code != http.StatusOK {
		e.t.Fatalf("keep-watching: %d %s", code, b)
	}
	var got struct {
		Items []struct {
			VideoID string `json:"video_id"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(b), &got); err != nil {
		e.t.Fatal(err)
	}
	var ids []string
	for _, i := range got.Items {
		ids = append(ids, i.VideoID)
	}
	return strings.Join(ids, " ")
}

// export is the user's GET /v1/export, one record a line: record:source:video.
func (e *eraseEnv) export(user string) []string {
	e.t.Helper()
	code, b := e.do(http.MethodGet, e.query+"/v1/export", user, "")
	if code != http.StatusOK {
		e.t.Fatalf("export: %d %s", code, b)
	}
	return exportRecords(e.t, b)
}

func exportRecords(t *testing.T, b string) []string {
	t.Helper()
	var out []string
	sc := bufio.NewScanner(strings.NewReader(b))
	for sc.Scan() {
		var l struct{ Record, Source, VideoID string }
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("export line %q: %v", sc.Text(), err)
		}
		l.Record, _ = m["record"].(string)
		l.Source, _ = m["source"].(string)
		l.VideoID, _ = m["video_id"].(string)
		out = append(out, strings.TrimRight(l.Record+":"+l.Source+":"+l.VideoID, ":"))
	}
	return out
}

// redisOf lists what Redis holds of user: their hash's fields and every
// index member that names them.
func redisOf(t *testing.T, c *redis.Client, user string) []string {
	t.Helper()
	ctx := context.Background()
	var out []string
	keys, err := c.Keys(ctx, "kw:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		switch typ := c.Type(ctx, k).Val(); {
		case strings.HasSuffix(k, ":u:"+user):
			for f := range c.HGetAll(ctx, k).Val() {
				out = append(out, k+" field "+fmt.Sprintf("%q", f))
			}
		case typ == "zset":
			for _, m := range c.ZRange(ctx, k, 0, -1).Val() {
				if strings.HasPrefix(m, user+"/") {
					out = append(out, k+" member "+m)
				}
			}
		case typ == "hash":
			for f := range c.HGetAll(ctx, k).Val() {
				if strings.HasPrefix(f, user+"/") {
					out = append(out, k+" field "+f)
				}
			}
		}
	}
	slices.Sort(out)
	return out
}

// deadLettersOf lists the user's dead-letter entries.
func deadLettersOf(t *testing.T, db *mgo.Database, user string) []string {
	t.Helper()
	cur, err := db.Collection(mongo.DeadLetterCollection).Find(context.Background(), bson.D{{Key: "entries.u", Value: user}})
	if err != nil {
		t.Fatal(err)
	}
	var docs []struct {
		Entries []struct {
			U, V string
		} `bson:"entries"`
	}
	if err := cur.All(context.Background(), &docs); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range docs {
		for _, en := range d.Entries {
			if en.U == user {
				out = append(out, en.V)
			}
		}
	}
	return out
}

// mongoOf lists the user's progress documents by _id.
func mongoOf(t *testing.T, db *mgo.Database, user string) []string {
	t.Helper()
	var out []string
	for id := range testenv.ProgressStates(t, db) {
		if u, _, _ := keepwatch.SplitID(id); u == user {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// TestEraseThroughTheAPIs erases a user with DELETE /v1/progress while they
// have progress in MongoDB, in the buffer and in a dead letter, then sends
// what a player's retries and a queued offline batch would: everything from
// before the erase stays gone, what comes after it is kept, and once the
// flusher has run nothing of the user is left anywhere but the tombstone
// and the new progress. Another user is untouched throughout.
func TestEraseThroughTheAPIs(t *testing.T) {
	e := newEraseEnv(t)
	ctx := context.Background()
	db := e.mongo.DB()
	rc := e.redis.Client()
	e.post("alice", `{"video_id":"flushed","percent":30,"series_id":"s","episode":1}`)
	e.post("bob", `{"video_id":"bobs","percent":30}`)
	testenv.Eventually(t, time.Minute, "the first posts in MongoDB", func() bool {
		return len(mongoOf(t, db, "alice")) == 1 && len(mongoOf(t, db, "bob")) == 1
	})
	// A dead letter of each, as a batch MongoDB refused would leave.
	old := time.Now().Add(-time.Minute).UnixMilli()
	if _, err := e.store.AddDeadLetter(ctx, keepwatch.DeadLetter{Error: "refused", Entries: []keepwatch.DeadEntry{
		{Progress: keepwatch.Progress{UserID: "alice", VideoID: "dead", State: keepwatch.State{EventTime: old, Percent: 5, Position: -1, Duration: -1, Episode: -1}}},
		{Progress: keepwatch.Progress{UserID: "bob", VideoID: "bobs-dead", State: keepwatch.State{EventTime: old, Percent: 5, Position: -1, Duration: -1, Episode: -1}}},
	}}); err != nil {
		t.Fatal(err)
	}
	// Pending in the buffer when the erase comes, or flushed already if
	// the flusher is quicker: the erase must cover it either way (the
	// buffer's own tests pin the pending case).
	e.post("alice", `{"video_id":"pending","percent":40}`)
	if got := e.row("alice"); got != "pending flushed" {
		t.Fatalf("alice's row before the erase: %q", got)
	}

	if code, b := e.do(http.MethodDelete, e.command+"/v1/progress", "alice", ""); code != http.StatusAccepted {
		t.Fatalf("DELETE /v1/progress: %d %s", code, b)
	}
	// Every read leaves out what the erase covers at once, before the
	// flusher has applied it.
	if got := e.row("alice"); got != "" {
		t.Fatalf("alice's row right after the erase: %q", got)
	}
	// A retry of an event observed before the erase (a minute ago on the
	// device's clock) and a queued offline batch from before it.
	dev := int64(1_700_000_000_000)
	e.post("alice", fmt.Sprintf(`{"video_id":"flushed","percent":90,"ts":%d,"sent_at":%d}`, dev, dev+60_000))
	if code, b := e.do(http.MethodPost, e.command+"/v1/progress/batch", "alice",
		fmt.Sprintf(`{"sent_at":%d,"events":[{"video_id":"offline","percent":10,"ts":%d}]}`, dev+60_000, dev)); code != http.StatusAccepted {
		t.Fatalf("batch: %d %s", code, b)
	}
	// Progress after the erase (a post in the erase's own millisecond is
	// erased too, so the player's next one counts).
	testenv.Eventually(t, time.Minute, "progress after the erase to show", func() bool {
		e.post("alice", `{"video_id":"after","percent":20}`)
		return e.row("alice") == "after"
	})
	testenv.Eventually(t, time.Minute, "the flusher to apply the erase", func() bool {
		return slices.Equal(mongoOf(t, db, "alice"), []string{"alice/", "alice/after"}) && len(redisOf(t, rc, "alice")) == 0
	})
	if got := deadLettersOf(t, db, "alice"); len(got) != 0 {
		t.Fatalf("alice's dead-letter entries after the erase: %v", got)
	}
	if got := deadLettersOf(t, db, "bob"); !slices.Equal(got, []string{"bobs-dead"}) {
		t.Fatalf("bob's dead-letter entries: %v", got)
	}
	if got := mongoOf(t, db, "bob"); !slices.Equal(got, []string{"bob/bobs"}) {
		t.Fatalf("bob's documents: %v", got)
	}
	// Once flushed, the erase has left Redis and the tombstone is what
	// keeps a late retry out: it is buffered, and hidden, and never
	// written.
	e.post("alice", fmt.Sprintf(`{"video_id":"flushed","percent":95,"ts":%d,"sent_at":%d}`, dev, dev+120_000))
	if got := e.row("alice"); got != "after" {
		t.Fatalf("alice's row with a late retry buffered: %q", got)
	}
	testenv.Eventually(t, time.Minute, "the late retry to be flushed away", func() bool {
		return len(redisOf(t, rc, "alice")) == 0
	})
	if got := mongoOf(t, db, "alice"); !slices.Equal(got, []string{"alice/", "alice/after"}) {
		t.Fatalf("alice's documents after a late retry: %v", got)
	}
	if got, want := e.export("alice"), []string{"export", "progress:mongodb:after", "erasure:mongodb", "end"}; !slices.Equal(got, want) {
		t.Fatalf("alice's export %v, want %v", got, want)
	}
	if v := metric(t, e.command, "keepwatch_flush_stale_total"); v < 1 {
		t.Fatalf("keepwatch_flush_stale_total = %v: the late retry should be counted stale", v)
	}
}

// TestEraseAndExportCommands runs `keepwatch erase --user` and `keepwatch
// export --user` as an operator would, on data in every store.
func TestEraseAndExportCommands(t *testing.T) {
	r := testenv.StartRedis(t)
	m := testenv.StartMongo(t)
	ctx := context.Background()
	conn := []string{"--redis-url", r.URL(), "--mongo-uri", m.URI, "--mongo-db", m.Database}
	if code, _, stderr := runMain(t, ctx, nil, append([]string{"migrate", "up"}, conn[2:]...)...); code != 0 {
		t.Fatalf("migrate: %s", stderr)
	}
	store, err := mongo.Open(ctx, mongo.Options{URI: m.URI, Database: m.Database})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = store.Close(ctx) }()
	now := time.Now().UnixMilli()
	st := func(t int64, pct float64) keepwatch.State {
		return keepwatch.State{EventTime: t, Percent: pct, Position: -1, Duration: -1, Episode: -1}
	}
	if _, err := store.WriteProgress(ctx, []keepwatch.Progress{
		{UserID: "alice", VideoID: "a", State: st(now-3000, 10)},
		{UserID: "alice", VideoID: "b", State: st(now-2000, 97)},
		{UserID: "bob", VideoID: "a", State: st(now-3000, 10)},
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := store.AddDeadLetter(ctx, keepwatch.DeadLetter{Error: "x", Entries: []keepwatch.DeadEntry{
		{Progress: keepwatch.Progress{UserID: "alice", VideoID: "d", State: st(now-1000, 5)}, Error: "refused"}}}); err != nil {
		t.Fatal(err)
	}
	c := r.Client()
	buf, err := redisbuf.New(c, redisbuf.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if per, err := buf.Apply(ctx, []keepwatch.Write{{UserID: "alice", Entries: []keepwatch.Entry{{VideoID: "p", State: st(now-500, 20)}}}}); err != nil || per[0] != nil {
		t.Fatalf("apply: %v %v", err, per)
	}

	code, stdout, stderr := runMain(t, ctx, nil, append([]string{"export", "--user", "alice"}, conn...)...)
	if code != 0 {
		t.Fatalf("export: %d %s", code, stderr)
	}
	want := []string{"export", "progress:mongodb:b", "progress:mongodb:a", "progress:buffer:p", "progress:dead_letter:d", "end"}
	if got := exportRecords(t, stdout); !slices.Equal(got, want) {
		t.Fatalf("export %v, want %v", got, want)
	}
	if !strings.Contains(stdout, `"finished":true`) {
		t.Fatalf("the finished video's line lacks its verdict:\n%s", stdout)
	}

	// The user comes from the command line only.
	code, _, stderr = runMain(t, ctx, map[string]string{"KEEPWATCH_USER": "alice"}, append([]string{"erase"}, conn...)...)
	if code != 2 || !strings.Contains(stderr, "--user is required on the command line") {
		t.Fatalf("erase without --user: %d %s", code, stderr)
	}
	code, stdout, stderr = runMain(t, ctx, nil, append([]string{"erase", "--user", "alice"}, conn...)...)
	if code != 0 {
		t.Fatalf("erase: %d %s", code, stderr)
	}
	for _, s := range []string{"redis:        1 pending entries", "mongodb:      2 progress documents", "dead letters: 1 entries (1 dead letters left empty and deleted)"} {
		if !strings.Contains(stdout, s) {
			t.Fatalf("erase report lacks %q:\n%s", s, stdout)
		}
	}
	if got := mongoOf(t, m.DB(), "alice"); !slices.Equal(got, []string{"alice/"}) {
		t.Fatalf("alice's documents: %v", got)
	}
	if got := redisOf(t, c, "alice"); len(got) != 0 {
		t.Fatalf("alice in Redis: %v", got)
	}
	if n, _ := store.CountDeadLetters(ctx); n != 0 {
		t.Fatalf("%d dead letters left", n)
	}
	if got := mongoOf(t, m.DB(), "bob"); !slices.Equal(got, []string{"bob/a"}) {
		t.Fatalf("bob's documents: %v", got)
	}
	code, stdout, _ = runMain(t, ctx, nil, append([]string{"export", "--user", "alice"}, conn...)...)
	if got := exportRecords(t, stdout); code != 0 || !slices.Equal(got, []string{"export", "erasure:mongodb", "end"}) {
		t.Fatalf("export after the erase: %d %v", code, got)
	}
}
