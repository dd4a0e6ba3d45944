package mongo_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	mgo "go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/keepwatch/keepwatch"
	"github.com/keepwatch/keepwatch/internal/testenv"
	"github.com/keepwatch/keepwatch/migrations"
	"github.com/keepwatch/keepwatch/storage/mongo"
)

// openStore opens a migrated store on a fresh database.
func openStore(t testing.TB, m *testenv.Mongo, o mongo.Options) *mongo.Store {
	t.Helper()
	ctx := context.Background()
	o.URI, o.Database = m.URI, m.Database
	if o.Timeout == 0 {
		o.Timeout = 20 * time.Second
	}
	s, err := mongo.Open(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	if err := migrations.Up(ctx, s.Database(), slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	return s
}

func st(t int64, pct float64) keepwatch.State {
	return keepwatch.State{EventTime: t, Percent: pct, Position: pct * 10, Duration: 1000}
}

func TestWriteProgressNewestWins(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, testenv.StartMongo(t), mongo.Options{})
	p := func(video string, state keepwatch.State) keepwatch.Progress {
		return keepwatch.Progress{UserID: "u1", VideoID: video, State: state}
	}
	deleted := st(200, 10)
	deleted.Kind = keepwatch.KindDeleted
	steps := []struct {
		name        string
		in          []keepwatch.Progress
		written     int
		stale       int
		wantA, want keepwatch.State
	}{
		{"insert", []keepwatch.Progress{p("a", st(100, 50)), p("b", st(100, 5))}, 2, 0, st(100, 50), st(100, 5)},
		{"older is stale", []keepwatch.Progress{p("a", st(99, 90)), p("b", st(50, 1))}, 0, 2, st(100, 50), st(100, 5)},
		{"same is stale", []keepwatch.Progress{p("a", st(100, 50))}, 0, 1, st(100, 50), st(100, 5)},
		{"tie broken by percent", []keepwatch.Progress{p("a", st(100, 51)), p("b", st(100, 4))}, 1, 1, st(100, 51), st(100, 5)},
		{"newer wins", []keepwatch.Progress{p("a", st(101, 1)), p("b", st(200, 10))}, 2, 0, st(101, 1), st(200, 10)},
		{"removal beats progress at the same instant", []keepwatch.Progress{p("b", deleted)}, 1, 0, st(101, 1), deleted},
		{"progress older than a removal is stale", []keepwatch.Progress{p("b", st(150, 99))}, 0, 1, st(101, 1), deleted},
	}
	for _, step := range steps {
		res, err := s.WriteProgress(ctx, step.in)
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if res.Written != step.written || res.Stale != step.stale || len(res.Failed) != 0 {
			t.Fatalf("%s: result %+v, want written %d stale %d", step.name, res, step.written, step.stale)
		}
		got := testenv.ProgressStates(t, s.Database())
		if got["u1/a"] != step.wantA || got["u1/b"] != step.want {
			t.Fatalf("%s: stored a=%+v b=%+v, want a=%+v b=%+v", step.name, got["u1/a"], got["u1/b"], step.wantA, step.want)
		}
	}
}

// TestWriteProgressChunks guards the chunking that keeps FerretDB alive: a
// rewrite of 100 existing documents in one update command would hang it.
func TestWriteProgressChunks(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, testenv.StartMongo(t), mongo.Options{WriteChunk: 40})
	var in []keepwatch.Progress
	for i := range 100 {
		in = append(in, keepwatch.Progress{UserID: fmt.Sprintf("user%d", i%7), VideoID: fmt.Sprintf("v%d", i), State: st(1000, float64(i%100))})
	}
	res, err := s.WriteProgress(ctx, in)
	if err != nil || res.Written != 100 || res.Stale != 0 {
		t.Fatalf("first write: %+v, %v", res, err)
	}
	res, err = s.WriteProgress(ctx, in)
	if err != nil || res.Written != 0 || res.Stale != 100 {
		t.Fatalf("rewrite: %+v, %v", res, err)
	}
	for i := range in {
		in[i].EventTime++
	}
	res, err = s.WriteProgress(ctx, in)
	if err != nil || res.Written != 100 || res.Stale != 0 {
		t.Fatalf("update: %+v, %v", res, err)
	}
	if got := testenv.ProgressStates(t, s.Database()); len(got) != 100 || got["user0/v0"].EventTime != 1001 {
		t.Fatalf("stored %d documents, user0/v0 = %+v", len(got), got["user0/v0"])
	}
}

// TestWriteProgressIsolatesPermanentFailures: a document the server refuses
// for good (here: it violates a unique index the test adds) is reported
// alone, and every other document of its chunk is written.
func TestWriteProgressIsolatesPermanentFailures(t *testing.T) {
	ctx := context.Background()
	m := testenv.StartMongo(t)
	s := openStore(t, m, mongo.Options{})
	addUniqueVideoIndex(t, s)
	if _, err := s.WriteProgress(ctx, []keepwatch.Progress{{UserID: "alice", VideoID: "x", State: st(1, 1)}}); err != nil {
		t.Fatal(err)
	}
	in := []keepwatch.Progress{
		{UserID: "bob", VideoID: "w", State: st(5, 5)},
		{UserID: "bob", VideoID: "x", State: st(5, 5)}, // same v as alice's: refused
		{UserID: "bob", VideoID: "y", State: st(5, 5)},
		{UserID: "alice", VideoID: "x", State: st(5, 5)}, // updates alice's own document: fine
	}
	res, err := s.WriteProgress(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Failed) != 1 || res.Failed[0].Index != 1 || res.Written+res.Stale != 3 {
		t.Fatalf("result %+v, want 3 written and document 1 failed", res)
	}
	// FerretDB reports no partial result for a bulk that stopped at an
	// error, so what that bulk applied before it counts as stale there.
	if !m.Embedded && res.Written != 3 {
		t.Fatalf("result %+v, want 3 written", res)
	}
	got := testenv.ProgressStates(t, s.Database())
	if _, ok := got["bob/x"]; ok || got["bob/w"] != st(5, 5) || got["bob/y"] != st(5, 5) || got["alice/x"] != st(5, 5) {
		t.Fatalf("stored %v", got)
	}
}

// addUniqueVideoIndex makes a second user's progress on an already stored
// video fail with a duplicate key error on an index other than _id.
func addUniqueVideoIndex(t testing.TB, s *mongo.Store) {
	t.Helper()
	_, err := s.Database().Collection(mongo.ProgressCollection).Indexes().CreateOne(context.Background(), mgo.IndexModel{
		Keys: bson.D{{Key: "v", Value: 1}}, Options: options.Index().SetUnique(true).SetName("test_unique_v"),
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestWriteProgressUnavailableWhenServerStopped(t *testing.T) {
	ctx := context.Background()
	m := testenv.StartEmbeddedMongo(t)
	s := openStore(t, m, mongo.Options{Timeout: 500 * time.Millisecond})
	m.Stop()
	_, err := s.WriteProgress(ctx, []keepwatch.Progress{{UserID: "u", VideoID: "v", State: st(1, 1)}})
	if !errors.Is(err, keepwatch.ErrUnavailable) {
		t.Fatalf("write with the server stopped: %v, want ErrUnavailable", err)
	}
	if _, err := s.AddDeadLetter(ctx, mongo.DeadLetter{Error: "x"}); !errors.Is(err, keepwatch.ErrUnavailable) {
		t.Fatalf("dead letter with the server stopped: %v, want ErrUnavailable", err)
	}
	m.Start()
	var res mongo.WriteResult
	for {
		// The driver finds the server again by itself; poll instead of
		// sleeping a guessed time.
		res, err = s.WriteProgress(ctx, []keepwatch.Progress{{UserID: "u", VideoID: "v", State: st(1, 1)}})
		if !errors.Is(err, keepwatch.ErrUnavailable) {
			break
		}
	}
	if err != nil || res.Written != 1 {
		t.Fatalf("write after restart: %+v, %v", res, err)
	}
}

func TestDeadLetters(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, testenv.StartMongo(t), mongo.Options{})
	first := time.Date(2026, 1, 2, 3, 4, 5, 6e6, time.UTC)
	dl := mongo.DeadLetter{
		Entries: []mongo.DeadEntry{
			{Progress: keepwatch.Progress{UserID: "u1", VideoID: "a", State: st(10, 1)}, Error: "E11000"},
			{Progress: keepwatch.Progress{UserID: "u2", VideoID: "b", State: keepwatch.State{EventTime: 11, Kind: keepwatch.KindDeleted, Position: keepwatch.Unknown, Duration: keepwatch.Unknown}}},
		},
		Error: "duplicate key", Attempts: 3, FirstFailure: first,
	}
	id, err := s.AddDeadLetter(ctx, dl)
	if err != nil {
		t.Fatal(err)
	}
	id2, err := s.AddDeadLetter(ctx, mongo.DeadLetter{Entries: dl.Entries[:1], Error: "later", Attempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	list, err := s.DeadLetters(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].ID != id || list[0].Count != 2 || list[0].Attempts != 3 || list[1].ID != id2 {
		t.Fatalf("list = %+v", list)
	}
	if n, err := s.CountDeadLetters(ctx); err != nil || n != 2 {
		t.Fatalf("count = %d, %v", n, err)
	}
	got, err := s.DeadLetter(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Entries, dl.Entries) || got.Error != dl.Error || !got.FirstFailure.Equal(first) || got.LastFailure.IsZero() {
		t.Fatalf("got %+v\nwant %+v", got, dl)
	}
	if err := s.ReplaceDeadLetterEntries(ctx, id, dl.Entries[:1], "still"); err != nil {
		t.Fatal(err)
	}
	got, _ = s.DeadLetter(ctx, id)
	if len(got.Entries) != 1 || got.Attempts != 4 || got.Error != "still" {
		t.Fatalf("after a failed replay: %+v", got)
	}
	if err := s.DeleteDeadLetter(ctx, id); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{id, "nope"} {
		if _, err := s.DeadLetter(ctx, bad); keepwatch.ErrorCode(err) != keepwatch.ENOTFOUND {
			t.Fatalf("DeadLetter(%q) = %v, want ENOTFOUND", bad, err)
		}
		if err := s.DeleteDeadLetter(ctx, bad); keepwatch.ErrorCode(err) != keepwatch.ENOTFOUND {
			t.Fatalf("DeleteDeadLetter(%q) = %v, want ENOTFOUND", bad, err)
		}
	}
}
