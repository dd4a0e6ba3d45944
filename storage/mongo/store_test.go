package mongo_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
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

// TestStoreContract runs the store's contract on the embedded FerretDB and,
// when KEEPWATCH_TEST_MONGO_URI names one, on that MongoDB too.
func TestStoreContract(t *testing.T) {
	t.Run("ferretdb", func(t *testing.T) { storeContract(t, testenv.StartEmbeddedMongo) })
	if os.Getenv(testenv.MongoURIEnv) == "" {
		t.Logf("%s is not set: the contract ran on the embedded FerretDB only", testenv.MongoURIEnv)
		return
	}
	t.Run("mongodb", func(t *testing.T) { storeContract(t, testenv.StartMongo) })
}

// storeContract is everything the flusher, the replayer and the query side
// need of the progress and dead-letter store. Each subtest gets a database
// of its own on a server that start returns.
func storeContract(t *testing.T, start func(testing.TB) *testenv.Mongo) {
	ctx := context.Background()
	t.Run("newest wins, ties and removals included", func(t *testing.T) {
		s := openStore(t, start(t), mongo.Options{})
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
	})

	// Chunking keeps FerretDB alive: a rewrite of 100 existing documents
	// in one update command would hang it.
	t.Run("writes in chunks", func(t *testing.T) {
		s := openStore(t, start(t), mongo.Options{WriteChunk: 40})
		var in []keepwatch.Progress
		for i := range 100 {
			in = append(in, keepwatch.Progress{UserID: fmt.Sprintf("user%d", i%7), VideoID: fmt.Sprintf("v%d", i), State: st(1000, float64(i%100))})
		}
		res, err := s.WriteProgress(ctx, in)
		if err != nil || res.Written != 100 || res.Stale != 0 {
			t.Fatalf("first write: %+v, %v", res, err)
		}
		res, err = s.WithWriteChunk(7).WriteProgress(ctx, in)
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
	})

	// A flusher whose claim lapsed mid-write, the flusher that took the
	// batch over and an operator's replay may write the same documents at
	// once: concurrent upserts of one document must neither fail nor let
	// an older state win.
	t.Run("concurrent writers of the same documents converge", func(t *testing.T) {
		m := start(t)
		if m.Embedded {
			// Measured: 3 to 16 of 50 documents written by 8 writers at
			// once kept an older state. FerretDB's SQLite handler applies
			// an update outside a transaction, between its read and its
			// write (FerretDB issue #3040), so $max is not atomic there.
			// Claims keep flushers from writing one key at once; this
			// case is MongoDB's, which updates a document atomically.
			t.Skip("FerretDB (SQLite) does not apply an update atomically: concurrent $max upserts of one document can lose the newest (FerretDB#3040)")
		}
		s := openStore(t, m, mongo.Options{})
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var in []keepwatch.Progress
				for v := range 10 {
					in = append(in, keepwatch.Progress{UserID: "u", VideoID: fmt.Sprintf("v%d", v), State: st(int64(100+w), float64(w))})
				}
				res, err := s.WriteProgress(ctx, in)
				if err == nil && len(res.Failed) > 0 {
					err = fmt.Errorf("writer %d: refused %+v", w, res.Failed)
				}
				errs <- err
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		got := testenv.ProgressStates(t, s.Database())
		for v := range 10 {
			if g := got[fmt.Sprintf("u/v%d", v)]; g != st(107, 7) {
				t.Fatalf("u/v%d = %+v, want the newest writer's %+v", v, g, st(107, 7))
			}
		}
	})

	// A document the server refuses for good (here: it violates a unique
	// index the test adds) is reported alone, and every other document of
	// its chunk is written.
	t.Run("a refused document is isolated", func(t *testing.T) {
		m := start(t)
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
	})

	t.Run("unavailable while the server is stopped, and back after", func(t *testing.T) {
		m := start(t)
		if !m.Embedded {
			t.Skip("the test cannot stop an external server; this case runs on the embedded FerretDB")
		}
		s := openStore(t, m, mongo.Options{Timeout: 500 * time.Millisecond})
		r, err := s.Reader(mongo.ReadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		m.Stop()
		one := []keepwatch.Progress{{UserID: "u", VideoID: "v", State: st(1, 1)}}
		checks := []struct {
			name string
			call func() error
		}{
			{"WriteProgress", func() error { _, err := s.WriteProgress(ctx, one); return err }},
			{"AddDeadLetter", func() error { _, err := s.AddDeadLetter(ctx, keepwatch.DeadLetter{Error: "x"}); return err }},
			{"DeadLetters", func() error { _, err := s.DeadLetters(ctx, 0); return err }},
			{"CountDeadLetters", func() error { _, err := s.CountDeadLetters(ctx); return err }},
			{"KeepWatching", func() error { _, err := r.KeepWatching(ctx, "u", 95, 20, nil); return err }},
			{"Progress", func() error { _, err := r.Progress(ctx, "u", []string{"v"}); return err }},
			{"Ping", func() error { return s.Ping(ctx) }},
		}
		for _, c := range checks {
			if err := c.call(); !errors.Is(err, keepwatch.ErrUnavailable) {
				t.Errorf("%s with the server stopped: %v, want ErrUnavailable", c.name, err)
			}
		}
		m.Start()
		// The driver finds the server again by itself.
		var res keepwatch.WriteResult
		testenv.Eventually(t, time.Minute, "a write after the restart", func() bool {
			res, err = s.WriteProgress(ctx, one)
			return !errors.Is(err, keepwatch.ErrUnavailable)
		})
		if err != nil || res.Written != 1 {
			t.Fatalf("write after restart: %+v, %v", res, err)
		}
	})

	t.Run("dead letters: add, list, read, replace, delete", func(t *testing.T) {
		s := openStore(t, start(t), mongo.Options{})
		first := time.Date(2026, 1, 2, 3, 4, 5, 6e6, time.UTC)
		dl := keepwatch.DeadLetter{
			Entries: []keepwatch.DeadEntry{
				{Progress: keepwatch.Progress{UserID: "u1", VideoID: "a", State: st(10, 1)}, Error: "E11000"},
				{Progress: keepwatch.Progress{UserID: "u2", VideoID: "b", State: keepwatch.State{EventTime: 11, Kind: keepwatch.KindDeleted, Position: keepwatch.Unknown, Duration: keepwatch.Unknown}}},
			},
			Error: "duplicate key", Attempts: 3, FirstFailure: first,
		}
		id, err := s.AddDeadLetter(ctx, dl)
		if err != nil {
			t.Fatal(err)
		}
		id2, err := s.AddDeadLetter(ctx, keepwatch.DeadLetter{Entries: dl.Entries[:1], Error: "later", Attempts: 1})
		if err != nil {
			t.Fatal(err)
		}
		list, err := s.DeadLetters(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 2 || list[0].ID != id || list[0].Count != 2 || list[0].Attempts != 3 || list[0].Error != dl.Error ||
			!list[0].FirstFailure.Equal(first) || list[1].ID != id2 {
			t.Fatalf("list = %+v", list)
		}
		if one, err := s.DeadLetters(ctx, 1); err != nil || len(one) != 1 || one[0].ID != id {
			t.Fatalf("list with limit 1 = %+v, %v", one, err)
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
		if list, _ := s.DeadLetters(ctx, 0); list[0].Count != 1 {
			t.Fatalf("listed count after a failed replay: %+v", list[0])
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
			if err := s.ReplaceDeadLetterEntries(ctx, bad, nil, "x"); keepwatch.ErrorCode(err) != keepwatch.ENOTFOUND {
				t.Fatalf("ReplaceDeadLetterEntries(%q) = %v, want ENOTFOUND", bad, err)
			}
		}
		if n, err := s.CountDeadLetters(ctx); err != nil || n != 1 {
			t.Fatalf("count after delete = %d, %v", n, err)
		}
	})

	t.Run("reads: keep watching and progress by video", func(t *testing.T) {
		s := openStore(t, start(t), mongo.Options{})
		r, err := s.Reader(mongo.ReadOptions{ReadPreference: "primaryPreferred"})
		if err != nil {
			t.Fatal(err)
		}
		gone := st(50, 30)
		gone.Kind = keepwatch.KindDeleted
		in := []keepwatch.Progress{
			{UserID: "alice", VideoID: "old", State: st(10, 20)},
			{UserID: "alice", VideoID: "mid", State: st(20, 40)},
			{UserID: "alice", VideoID: "new", State: st(30, 60)},
			{UserID: "alice", VideoID: "done", State: st(40, 99)}, // finished
			{UserID: "alice", VideoID: "gone", State: gone},       // removed
			{UserID: "bob", VideoID: "new", State: st(99, 10)},    // someone else's
		}
		if _, err := s.WriteProgress(ctx, in); err != nil {
			t.Fatal(err)
		}
		videos := func(ps []keepwatch.Progress) []string {
			var out []string
			for _, p := range ps {
				out = append(out, p.VideoID)
			}
			return out
		}
		for _, tc := range []struct {
			name  string
			limit int
			also  []string
			want  []string
		}{
			{"unfinished, newest first", 20, nil, []string{"new", "mid", "old"}},
			{"limited", 2, nil, []string{"new", "mid"}},
			{"with the stored state of pending videos, whatever it is", 20, []string{"done", "gone"}, []string{"gone", "done", "new", "mid", "old"}},
		} {
			got, err := r.KeepWatching(ctx, "alice", 95, tc.limit, tc.also)
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			if !slices.Equal(videos(got), tc.want) || got[0].UserID != "alice" {
				t.Fatalf("%s: %v, want %v", tc.name, videos(got), tc.want)
			}
		}
		got, err := r.Progress(ctx, "alice", []string{"new", "missing", "gone"})
		if err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(got, func(a, b keepwatch.Progress) int { return a.Compare(b.State) })
		if len(got) != 2 || got[0].VideoID != "new" || got[0].State != st(30, 60) || got[1].State != gone {
			t.Fatalf("progress of new, missing, gone = %+v", got)
		}
		if one, err := r.Progress(ctx, "bob", []string{"new"}); err != nil || len(one) != 1 || one[0].State != st(99, 10) {
			t.Fatalf("bob's new = %+v, %v", one, err)
		}
		if _, err := s.Reader(mongo.ReadOptions{ReadPreference: "fastest"}); err == nil {
			t.Fatal("an unknown read preference was accepted")
		}
	})
}

// openStore opens a migrated store on the test's database.
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
