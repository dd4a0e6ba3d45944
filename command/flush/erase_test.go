package flush_test

import (
	"context"
	"maps"
	"testing"

	"github.com/keepwatch/keepwatch"
	"github.com/keepwatch/keepwatch/command/flush"
	"github.com/keepwatch/keepwatch/storage/mongo"
)

// eraseBeforeWrite is the real store with an erase of user at at run, once,
// right before the first batch write reaches MongoDB: where a DELETE
// /v1/progress lands while a flusher holds a claimed batch, or while an
// operator's replay has read a dead letter and not yet written it.
type eraseBeforeWrite struct {
	flush.DeadLetterStore
	flush.Store
	e    *env
	user string
	at   int64
	done bool
}

func (s *eraseBeforeWrite) WriteProgress(ctx context.Context, ps []keepwatch.Progress) (keepwatch.WriteResult, error) {
	if !s.done {
		s.done = true
		if _, err := s.e.buf.Erase(ctx, s.user, s.at); err != nil {
			s.e.t.Error(err)
		}
		if _, err := s.e.store.EraseUser(ctx, s.user, s.at); err != nil {
			s.e.t.Error(err)
		}
	}
	return s.e.store.WriteProgress(ctx, ps)
}

func st(t int64, pct float64) keepwatch.State {
	return keepwatch.State{EventTime: t, Percent: pct, Position: keepwatch.Unknown, Duration: keepwatch.Unknown, Episode: keepwatch.Unknown}
}

// TestEraseWhileABatchIsBeingWritten: a flusher has claimed a batch with
// the user's older progress when the erase comes; its write must leave
// nothing of it, and the rest of the batch is written.
func TestEraseWhileABatchIsBeingWritten(t *testing.T) {
	e := newEnv(t, nil, mongo.Options{})
	e.apply(
		keepwatch.Progress{UserID: "alice", VideoID: "a", State: st(100, 10)},
		keepwatch.Progress{UserID: "bob", VideoID: "a", State: st(100, 10)},
	)
	store := &eraseBeforeWrite{Store: e.store, e: e, user: "alice", at: 200}
	f, _ := newFlusher(t, e.buf, store, flush.Config{})
	if _, err := f.FlushOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The erase itself is in the buffer now; the next drain applies it.
	if _, err := f.FlushOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := map[string]keepwatch.State{"alice/": keepwatch.EraseState(200), "bob/a": st(100, 10)}
	if got := e.stored(); !maps.Equal(got, want) {
		t.Fatalf("stored %v, want %v", got, want)
	}
	if n := e.pending(); n != 0 {
		t.Fatalf("%d entries still pending", n)
	}
}

// TestReplayOfADeadLetterOlderThanAnEraseChangesNothing: the erase comes
// after the replay read the dead letter; the replay writes none of the
// user's entries it covers, the dead letter is settled, and another user's
// entries in it are written.
func TestReplayOfADeadLetterOlderThanAnEraseChangesNothing(t *testing.T) {
	e := newEnv(t, nil, mongo.Options{})
	ctx := context.Background()
	if _, err := e.store.WriteProgress(ctx, []keepwatch.Progress{{UserID: "alice", VideoID: "newer", State: st(300, 50)}}); err != nil {
		t.Fatal(err)
	}
	id, err := e.store.AddDeadLetter(ctx, keepwatch.DeadLetter{Error: "refused", Entries: []keepwatch.DeadEntry{
		{Progress: keepwatch.Progress{UserID: "alice", VideoID: "old", State: st(150, 10)}},
		{Progress: keepwatch.Progress{UserID: "alice", VideoID: "after", State: st(250, 10)}},
		{Progress: keepwatch.Progress{UserID: "bob", VideoID: "b", State: st(150, 10)}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	store := &eraseBeforeWrite{DeadLetterStore: e.store, e: e, user: "alice", at: 200}
	res, err := flush.NewReplayer(store).Retry(ctx, id, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Written != 2 || res.Stale != 1 || res.DeadLetters != 1 {
		t.Fatalf("replay %+v, want bob's and alice's later entry written, the erased one stale", res)
	}
	want := map[string]keepwatch.State{"alice/": keepwatch.EraseState(200), "alice/newer": st(300, 50), "alice/after": st(250, 10), "bob/b": st(150, 10)}
	if got := e.stored(); !maps.Equal(got, want) {
		t.Fatalf("stored %v, want %v", got, want)
	}
	if n, _ := e.store.CountDeadLetters(ctx); n != 0 {
		t.Fatalf("%d dead letters left", n)
	}
	// Replaying again what an operator kept from before (a copy of the
	// dead letter) changes nothing either.
	if _, err := e.store.AddDeadLetter(ctx, keepwatch.DeadLetter{Error: "copy", Entries: []keepwatch.DeadEntry{
		{Progress: keepwatch.Progress{UserID: "alice", VideoID: "old", State: st(150, 10)}},
		{Progress: keepwatch.Progress{UserID: "bob", VideoID: "b2", State: st(150, 10)}},
	}}); err != nil {
		t.Fatal(err)
	}
	if _, err := flush.NewReplayer(e.store).RetryAll(ctx, nil); err != nil {
		t.Fatal(err)
	}
	want["bob/b2"] = st(150, 10)
	if got := e.stored(); !maps.Equal(got, want) {
		t.Fatalf("stored %v, want %v", got, want)
	}
}
