package redisbuf_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/keepwatch/keepwatch"
	"github.com/keepwatch/keepwatch/internal/testenv"
	"github.com/keepwatch/keepwatch/storage/redisbuf"
)

func st(t int64, pct float64) keepwatch.State {
	return keepwatch.State{EventTime: t, Percent: pct, Position: keepwatch.Unknown, Duration: keepwatch.Unknown, Episode: keepwatch.Unknown}
}

func del(t int64) keepwatch.State {
	return keepwatch.State{EventTime: t, Kind: keepwatch.KindDeleted, Position: keepwatch.Unknown, Duration: keepwatch.Unknown, Episode: keepwatch.Unknown}
}

// ep is st for an episode of a series.
func ep(t int64, pct float64, series string, episode float64) keepwatch.State {
	s := st(t, pct)
	s.SeriesID, s.Episode = series, episode
	return s
}

func newBuffer(t *testing.T, c redis.UniversalClient, o redisbuf.Options) *redisbuf.Buffer {
	t.Helper()
	b, err := redisbuf.New(c, o)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func pendingMap(t *testing.T, b *redisbuf.Buffer, user string) map[string]keepwatch.State {
	t.Helper()
	ps, err := b.Pending(context.Background(), user)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]keepwatch.State{}
	for _, p := range ps {
		m[p.VideoID] = p.State
	}
	return m
}

func apply(t *testing.T, b *redisbuf.Buffer, user string, es ...redisbuf.Entry) error {
	t.Helper()
	per, err := b.Apply(context.Background(), []redisbuf.Write{{UserID: user, Entries: es}})
	if err != nil {
		t.Fatal(err)
	}
	return per[0]
}

// contract runs the buffer's operations against a client; it is run on a
// single redis-server and on a 3-master Redis Cluster.
func contract(t *testing.T, c redis.UniversalClient) {
	ctx := context.Background()
	reset := func(t *testing.T) {
		t.Helper()
		var err error
		if cc, ok := c.(*redis.ClusterClient); ok {
			err = cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return m.FlushAll(ctx).Err() })
		} else {
			err = c.FlushAll(ctx).Err()
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Run("newest wins and tombstones are ordered", func(t *testing.T) {
		reset(t)
		b := newBuffer(t, c, redisbuf.Options{Shards: 8})
		u := fmt.Sprintf("user-%d", rand.Int())
		apply(t, b, u, redisbuf.Entry{VideoID: "v1", State: st(2000, 20)})
		apply(t, b, u, redisbuf.Entry{VideoID: "v1", State: st(1000, 90)}) // late retry: older
		apply(t, b, u, redisbuf.Entry{VideoID: "v2", State: st(1000, 50)}, redisbuf.Entry{VideoID: "v2", State: del(1500)})
		apply(t, b, u, redisbuf.Entry{VideoID: "v2", State: st(1400, 60)}) // older than the delete
		got := pendingMap(t, b, u)
		if got["v1"] != st(2000, 20) {
			t.Errorf("v1 = %+v, want the event at 2000", got["v1"])
		}
		if got["v2"] != del(1500) {
			t.Errorf("v2 = %+v, want the tombstone at 1500", got["v2"])
		}
		stats, err := b.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if stats.Pending < 2 || stats.Oldest.IsZero() {
			t.Errorf("stats = %+v, want ≥2 pending and an oldest time", stats)
		}
	})
	t.Run("claim, release exactly what was written", func(t *testing.T) {
		reset(t)
		b := newBuffer(t, c, redisbuf.Options{Shards: 4})
		u := fmt.Sprintf("user-%d", rand.Int())
		apply(t, b, u, redisbuf.Entry{VideoID: "a", State: st(1000, 10)}, redisbuf.Entry{VideoID: "b", State: st(1000, 10)})
		shard := b.ShardOf(u)
		cl, err := b.Claim(ctx, shard, 100, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if len(cl.Entries) != 2 {
			t.Fatalf("claimed %d entries, want 2", len(cl.Entries))
		}
		// Claimed entries are invisible to a second flusher.
		again, err := b.Claim(ctx, shard, 100, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if len(again.Entries) != 0 {
			t.Fatalf("second claim got %d entries while leased", len(again.Entries))
		}
		// "a" gets a newer value while the claim is being written.
		apply(t, b, u, redisbuf.Entry{VideoID: "a", State: st(2000, 20)})
		if err := b.Release(ctx, cl, []int{0, 1}, 0); err != nil {
			t.Fatal(err)
		}
		got := pendingMap(t, b, u)
		if len(got) != 1 || got["a"] != st(2000, 20) {
			t.Fatalf("after release pending = %+v, want only a@2000", got)
		}
		// The newer value is due again at once.
		next, err := b.Claim(ctx, shard, 100, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if len(next.Entries) != 1 || next.Entries[0].State != st(2000, 20) {
			t.Fatalf("next claim = %+v, want a@2000", next.Entries)
		}
		if err := b.Release(ctx, next, nil, 0); err != nil { // not handled: stays pending, due again
			t.Fatal(err)
		}
		last, err := b.Claim(ctx, shard, 100, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if len(last.Entries) != 1 {
			t.Fatalf("an unhandled entry must be due again, got %d", len(last.Entries))
		}
		if err := b.Release(ctx, last, []int{0}, 0); err != nil {
			t.Fatal(err)
		}
		if got := pendingMap(t, b, u); len(got) != 0 {
			t.Fatalf("pending after full release = %+v", got)
		}
	})
	t.Run("an expired lease is claimed again", func(t *testing.T) {
		reset(t)
		now := time.Now()
		clock := func() time.Time { return now }
		b := newBuffer(t, c, redisbuf.Options{Shards: 2, Now: clock})
		u := fmt.Sprintf("user-%d", rand.Int())
		apply(t, b, u, redisbuf.Entry{VideoID: "a", State: st(1000, 10)})
		dead, err := b.Claim(ctx, b.ShardOf(u), 10, time.Second)
		if err != nil || len(dead.Entries) != 1 {
			t.Fatalf("claim: %v %+v", err, dead)
		}
		now = now.Add(2 * time.Second) // the first flusher died; its lease passed
		cl, err := b.Claim(ctx, b.ShardOf(u), 10, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if len(cl.Entries) != 1 || cl.Entries[0].VideoID != "a" {
			t.Fatalf("reclaim = %+v", cl.Entries)
		}
		// The dead flusher comes back late and releases nothing it did not
		// write: its undone release must not make the entry visible under
		// the live claim.
		if err := b.Release(ctx, dead, nil, 0); err != nil {
			t.Fatal(err)
		}
		if again, _ := b.Claim(ctx, b.ShardOf(u), 10, time.Minute); len(again.Entries) != 0 {
			t.Fatalf("entry leaked out of a live claim: %+v", again.Entries)
		}
		if err := b.Release(ctx, cl, []int{0}, 0); err != nil {
			t.Fatal(err)
		}
		if got := pendingMap(t, b, u); len(got) != 0 {
			t.Fatalf("pending = %+v", got)
		}
	})
	// drained fails unless Redis holds no key, on every master of a
	// cluster: releasing every entry must leave nothing behind.
	drained := func(t *testing.T) {
		t.Helper()
		var n int64
		count := func(ctx context.Context, c *redis.Client) error {
			k, err := c.DBSize(ctx).Result()
			n += k
			return err
		}
		var err error
		if cc, ok := c.(*redis.ClusterClient); ok {
			var mu sync.Mutex
			err = cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
				mu.Lock()
				defer mu.Unlock()
				return count(ctx, m)
			})
		} else {
			err = count(ctx, c.(*redis.Client))
		}
		if err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Fatalf("%d keys left in a drained buffer", n)
		}
	}
	// clocked is a buffer whose clock is *now.
	clocked := func(t *testing.T, shards int, now *time.Time) *redisbuf.Buffer {
		t.Helper()
		return newBuffer(t, c, redisbuf.Options{Shards: shards, Now: func() time.Time { return *now }})
	}
	t.Run("a renewed claim keeps its entries past its first lease, and loses them once it lapses", func(t *testing.T) {
		reset(t)
		now := time.Now()
		b := clocked(t, 2, &now)
		u := fmt.Sprintf("user-%d", rand.Int())
		shard := b.ShardOf(u)
		apply(t, b, u, redisbuf.Entry{VideoID: "a", State: st(1000, 10)}, redisbuf.Entry{VideoID: "b", State: st(1000, 10)})
		first, err := b.Claim(ctx, shard, 10, time.Second)
		if err != nil || len(first.Entries) != 2 {
			t.Fatalf("claim = %+v, %v", first, err)
		}
		now = now.Add(800 * time.Millisecond)
		if n, err := b.Renew(ctx, first, time.Second); err != nil || n != 2 {
			t.Fatalf("renew within the lease = %d, %v; want 2", n, err)
		}
		now = now.Add(500 * time.Millisecond) // past the first deadline, within the renewed one
		if other, err := b.Claim(ctx, shard, 10, time.Second); err != nil || len(other.Entries) != 0 {
			t.Fatalf("a renewed claim's entries were claimed again: %+v, %v", other, err)
		}
		// The lease lapses unrenewed, but nobody claimed the entries: they
		// are still the first claim's, and a late renewal says so.
		now = now.Add(time.Second)
		if n, err := b.Renew(ctx, first, time.Second); err != nil || n != 2 {
			t.Fatalf("late renewal of an untaken claim = %d, %v; want 2", n, err)
		}
		now = now.Add(2 * time.Second)
		second, err := b.Claim(ctx, shard, 10, time.Minute)
		if err != nil || len(second.Entries) != 2 || second.Token == first.Token {
			t.Fatalf("claim after the lease lapsed = %+v, %v", second, err)
		}
		// The first claim is lost: renewing it renews nothing, and its
		// release (nothing done) leaves the second claim's entries hidden.
		if n, err := b.Renew(ctx, first, time.Minute); err != nil || n != 0 {
			t.Fatalf("renewal of a lost claim = %d, %v; want 0", n, err)
		}
		if err := b.Release(ctx, first, nil, 0); err != nil {
			t.Fatal(err)
		}
		if again, err := b.Claim(ctx, shard, 10, time.Minute); err != nil || len(again.Entries) != 0 {
			t.Fatalf("entries leaked out of a live claim: %+v, %v", again, err)
		}
		if n, err := b.Renew(ctx, second, time.Minute); err != nil || n != 2 {
			t.Fatalf("renewal of the live claim = %d, %v; want 2", n, err)
		}
		// The lost claim's flusher wrote "a" after all and releases it
		// done: the value is removed (it is written), and the live claim
		// now renews only "b".
		if err := b.Release(ctx, first, []int{0}, 0); err != nil {
			t.Fatal(err)
		}
		if n, err := b.Renew(ctx, second, time.Minute); err != nil || n != 1 {
			t.Fatalf("renewal after another flusher released an entry = %d, %v; want 1", n, err)
		}
		if err := b.Release(ctx, second, []int{0, 1}, 0); err != nil {
			t.Fatal(err)
		}
		if got := pendingMap(t, b, u); len(got) != 0 {
			t.Fatalf("pending = %+v", got)
		}
		drained(t)
	})
	t.Run("a lapsed claim is taken over from its lease end, and nothing pending from before", func(t *testing.T) {
		reset(t)
		t0 := time.Now().Truncate(time.Millisecond)
		now := t0
		b := clocked(t, 1, &now)
		apply(t, b, "u1", redisbuf.Entry{VideoID: "a", State: st(1, 1)}, redisbuf.Entry{VideoID: "b", State: st(1, 1)})
		held, err := b.Claim(ctx, 0, 10, time.Second)
		if err != nil || len(held.Entries) != 2 || !held.NextLeaseEnd.IsZero() {
			t.Fatalf("claim = %+v, %v; want a and b, and no other lease", held, err)
		}
		now = t0.Add(500 * time.Millisecond)
		apply(t, b, "u2", redisbuf.Entry{VideoID: "fresh", State: st(1, 1)})
		// A regular claim takes the fresh entry and sees when the other
		// claim's lease ends; it hands the entry back unwritten.
		other, err := b.Claim(ctx, 0, 10, time.Second)
		if err != nil || len(other.Entries) != 1 || !other.NextLeaseEnd.Equal(t0.Add(time.Second)) {
			t.Fatalf("claim = %+v, %v; want the fresh entry and the lease end %s", other, err, t0.Add(time.Second))
		}
		if err := b.Release(ctx, other, nil, 0); err != nil {
			t.Fatal(err)
		}
		end := other.NextLeaseEnd
		// Renewed in time, the lease has not lapsed: nothing to take over,
		// and the new end is the one to wait for.
		now = t0.Add(800 * time.Millisecond)
		if n, err := b.Renew(ctx, held, time.Second); err != nil || n != 2 {
			t.Fatalf("renew = %d, %v", n, err)
		}
		now = end.Add(10 * time.Millisecond)
		none, err := b.ClaimLapsed(ctx, 0, 10, time.Second, end)
		if err != nil || len(none.Entries) != 0 || !none.NextLeaseEnd.Equal(t0.Add(1800*time.Millisecond)) {
			t.Fatalf("take-over of a renewed claim = %+v, %v; want nothing and the lease end %s", none, err, t0.Add(1800*time.Millisecond))
		}
		// Its flusher dies: from the new end on, its batch is taken over,
		// and the fresh entry pending since before stays for a drain.
		end = none.NextLeaseEnd
		now = end.Add(10 * time.Millisecond)
		took, err := b.ClaimLapsed(ctx, 0, 10, time.Second, end)
		if err != nil || len(took.Entries) != 2 || took.Entries[0].UserID != "u1" || took.Entries[1].UserID != "u1" {
			t.Fatalf("take-over of a lapsed claim = %+v, %v; want u1's a and b", took, err)
		}
		if took.Failures[0].Count != 1 {
			t.Fatalf("failures of a dead flusher's entry = %+v, want one", took.Failures[0])
		}
		if n, err := b.Renew(ctx, held, time.Second); err != nil || n != 0 {
			t.Fatalf("renewal of the taken-over claim = %d, %v; want 0", n, err)
		}
		if err := b.Release(ctx, took, []int{0, 1}, 0); err != nil {
			t.Fatal(err)
		}
		rest, err := b.Claim(ctx, 0, 10, time.Second)
		if err != nil || len(rest.Entries) != 1 || rest.Entries[0].VideoID != "fresh" {
			t.Fatalf("drain after the take-over = %+v, %v; want the fresh entry", rest, err)
		}
		if err := b.Release(ctx, rest, []int{0}, 0); err != nil {
			t.Fatal(err)
		}
		drained(t)
	})
	t.Run("failed attempts are counted with the entry across claims", func(t *testing.T) {
		reset(t)
		start := time.Now().Truncate(time.Millisecond)
		now := start
		b := clocked(t, 2, &now)
		u := fmt.Sprintf("user-%d", rand.Int())
		shard := b.ShardOf(u)
		apply(t, b, u, redisbuf.Entry{VideoID: "a", State: st(1000, 10)})
		claim := func(want int) *keepwatch.Claim {
			t.Helper()
			cl, err := b.Claim(ctx, shard, 10, time.Second)
			if err != nil || len(cl.Entries) != 1 {
				t.Fatalf("claim = %+v, %v", cl, err)
			}
			f := cl.Failures[0]
			if f.Count != want || (want > 0 && !f.Since.Equal(start)) || (want == 0 && !f.Since.IsZero()) {
				t.Fatalf("failures = %+v, want %d since %s", f, want, start)
			}
			return cl
		}
		cl := claim(0)
		now = now.Add(time.Millisecond)
		if err := b.Release(ctx, cl, nil, 3); err != nil { // refused three times
			t.Fatal(err)
		}
		claim(3)
		// Its flusher dies: the claim counts as one more once it lapses.
		now = now.Add(2 * time.Second)
		cl = claim(4)
		// MongoDB unreachable: the claim takes its count back.
		if err := b.Release(ctx, cl, nil, 0); err != nil {
			t.Fatal(err)
		}
		cl = claim(4)
		// Written while a newer value arrived: the newer one starts afresh.
		apply(t, b, u, redisbuf.Entry{VideoID: "a", State: st(2000, 20)})
		if err := b.Release(ctx, cl, []int{0}, 0); err != nil {
			t.Fatal(err)
		}
		start = now
		cl = claim(0)
		if cl.Entries[0].State != st(2000, 20) {
			t.Fatalf("claimed %+v, want the newer value", cl.Entries[0])
		}
		if err := b.Release(ctx, cl, nil, 1); err != nil {
			t.Fatal(err)
		}
		cl = claim(1)
		if err := b.Release(ctx, cl, []int{0}, 0); err != nil {
			t.Fatal(err)
		}
		drained(t)
	})
	t.Run("a lapsed claim released late, while another claim holds its entries, leaves nothing behind", func(t *testing.T) {
		reset(t)
		now := time.Now()
		b := clocked(t, 1, &now)
		u := fmt.Sprintf("user-%d", rand.Int())
		apply(t, b, u, redisbuf.Entry{VideoID: "a", State: st(1000, 10)}, redisbuf.Entry{VideoID: "b", State: st(1000, 10)})
		old, err := b.Claim(ctx, 0, 10, time.Second)
		if err != nil || len(old.Entries) != 2 {
			t.Fatalf("claim = %+v, %v", old, err)
		}
		now = now.Add(2 * time.Second)
		// A new claim takes both over; then the old claim's flusher, which
		// wrote "a" after all, releases it as done: it is removed, and the
		// new claim's release of it (its own write found it stale) and of
		// "b" ends with nothing left.
		cl, err := b.Claim(ctx, 0, 10, time.Second)
		if err != nil || len(cl.Entries) != 2 {
			t.Fatalf("claim = %+v, %v", cl, err)
		}
		if err := b.Release(ctx, old, []int{0}, 0); err != nil {
			t.Fatal(err)
		}
		if err := b.Release(ctx, cl, []int{0, 1}, 0); err != nil {
			t.Fatal(err)
		}
		drained(t)
	})
	t.Run("one apply over many shards answers each write for itself", func(t *testing.T) {
		reset(t)
		// 4 entries over 4 shards: each shard holds at most one.
		b := newBuffer(t, c, redisbuf.Options{Shards: 4, HighWater: 4})
		// Two users per shard, so groups of one shard interleave with others'.
		users := map[int][]string{}
		for found := 0; found < 8; {
			u := fmt.Sprintf("user-%d", rand.Int())
			if s := b.ShardOf(u); len(users[s]) < 2 {
				users[s] = append(users[s], u)
				found++
			}
		}
		// Shard 0 is full with users[0][0]'s entry.
		if err := apply(t, b, users[0][0], redisbuf.Entry{VideoID: "old", State: st(1, 1)}); err != nil {
			t.Fatal(err)
		}
		ws := []redisbuf.Write{
			{UserID: users[1][0], Entries: []redisbuf.Entry{{VideoID: "v", State: st(5, 5)}}},
			{UserID: users[0][1], Entries: []redisbuf.Entry{{VideoID: "v", State: st(5, 5)}}}, // shard 0 full: refused
			{UserID: users[2][0], Entries: []redisbuf.Entry{{VideoID: "v", State: st(5, 5)}, {VideoID: "v", State: st(6, 6)}}},
			{UserID: users[0][0], Entries: []redisbuf.Entry{{VideoID: "old", State: st(9, 9)}}}, // an update: accepted
			{UserID: users[1][1], Entries: []redisbuf.Entry{{VideoID: "w", State: st(5, 5)}}},   // shard 1 filled above: refused
			{UserID: users[3][0]},
		}
		per, err := b.Apply(ctx, ws)
		if err != nil {
			t.Fatal(err)
		}
		want := []error{nil, keepwatch.ErrBufferFull, nil, nil, keepwatch.ErrBufferFull, nil}
		for i := range ws {
			if !errors.Is(per[i], want[i]) || (want[i] == nil && per[i] != nil) {
				t.Errorf("write %d (%s, shard %d): %v, want %v", i, ws[i].UserID, b.ShardOf(ws[i].UserID), per[i], want[i])
			}
		}
		wantPending := map[string]map[string]keepwatch.State{
			users[1][0]: {"v": st(5, 5)},
			users[0][1]: {},
			users[2][0]: {"v": st(6, 6)},
			users[0][0]: {"old": st(9, 9)},
			users[1][1]: {},
		}
		for u, w := range wantPending {
			if got := pendingMap(t, b, u); !maps.Equal(got, w) {
				t.Errorf("%s (shard %d) pending %+v, want %+v", u, b.ShardOf(u), got, w)
			}
		}
	})
	t.Run("a commit of more new entries than one index call takes indexes them all", func(t *testing.T) {
		reset(t)
		// The script indexes a section's new entries with one ZADD per
		// thousand (Lua's stack bounds what one call can pass, at about
		// 4,000): 5,000 new entries in one shard take five.
		b := newBuffer(t, c, redisbuf.Options{Shards: 1})
		var ws []redisbuf.Write
		for u := range 50 {
			w := redisbuf.Write{UserID: fmt.Sprintf("bulk-%d", u)}
			for v := range 100 {
				w.Entries = append(w.Entries, redisbuf.Entry{VideoID: fmt.Sprintf("v%d", v), State: st(int64(10+v), 5)})
			}
			ws = append(ws, w)
		}
		per, err := b.Apply(ctx, ws)
		if err != nil {
			t.Fatal(err)
		}
		for i, e := range per {
			if e != nil {
				t.Fatalf("write %d: %v", i, e)
			}
		}
		stats, err := b.Stats(ctx)
		if err != nil || stats.Pending != 5000 || stats.Oldest.IsZero() {
			t.Fatalf("stats %+v, %v; want 5,000 pending entries with an age", stats, err)
		}
		claimed := 0
		for {
			cl, err := b.Claim(ctx, 0, 1000, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if len(cl.Entries) == 0 {
				break
			}
			claimed += len(cl.Entries)
			done := make([]int, len(cl.Entries))
			for i := range done {
				done[i] = i
			}
			if err := b.Release(ctx, cl, done, 0); err != nil {
				t.Fatal(err)
			}
		}
		if claimed != 5000 {
			t.Fatalf("claimed %d entries, want every one of the 5,000 indexed", claimed)
		}
	})
	t.Run("a shard count other than the data's is refused until the buffer is empty", func(t *testing.T) {
		reset(t)
		four := newBuffer(t, c, redisbuf.Options{Shards: 4})
		eight := newBuffer(t, c, redisbuf.Options{Shards: 8})
		if err := four.CheckShards(ctx); err != nil {
			t.Fatalf("first check: %v", err)
		}
		u := fmt.Sprintf("user-%d", rand.Int())
		apply(t, four, u, redisbuf.Entry{VideoID: "v", State: st(1000, 10)})
		err := eight.CheckShards(ctx)
		if err == nil || !strings.Contains(err.Error(), "--redis-shards 4") || !strings.Contains(err.Error(), "has 8") {
			t.Fatalf("check with 8 shards over entries written with 4 = %v, want an error naming both", err)
		}
		// The refusal changed nothing: the entry is there, and 4 still fits.
		if got := pendingMap(t, four, u); got["v"] != st(1000, 10) {
			t.Fatalf("pending after the refused check = %+v", got)
		}
		if err := four.CheckShards(ctx); err != nil {
			t.Fatalf("check with the recorded count after a refusal: %v", err)
		}
		// A reader refuses any count but the recorded one, even one that a
		// writer would be allowed to take over an empty buffer.
		if err := four.MatchesShards(ctx); err != nil {
			t.Fatalf("reader with the recorded count: %v", err)
		}
		if err := eight.MatchesShards(ctx); err == nil || !strings.Contains(err.Error(), "--redis-shards 4") {
			t.Fatalf("reader with 8 shards over data written with 4 = %v, want an error", err)
		}
		// Drained, the buffer takes the new count, and then refuses the old
		// one once entries are written under the new.
		cl, err := four.Claim(ctx, four.ShardOf(u), 10, time.Minute)
		if err != nil || len(cl.Entries) != 1 {
			t.Fatalf("claim = %+v, %v", cl, err)
		}
		if err := four.Release(ctx, cl, []int{0}, 0); err != nil {
			t.Fatal(err)
		}
		if err := eight.CheckShards(ctx); err != nil {
			t.Fatalf("check with 8 shards over an empty buffer: %v", err)
		}
		apply(t, eight, u, redisbuf.Entry{VideoID: "w", State: st(2000, 20)})
		if err := four.CheckShards(ctx); err == nil || !strings.Contains(err.Error(), "--redis-shards 8") {
			t.Fatalf("check with 4 shards over entries written with 8 = %v, want an error", err)
		}
	})
	t.Run("with no count recorded, entries are checked against this count", func(t *testing.T) {
		// As after an upgrade from a build that recorded no count: entries
		// are written without CheckShards.
		four := newBuffer(t, c, redisbuf.Options{Shards: 4})
		eight := newBuffer(t, c, redisbuf.Options{Shards: 8})
		user := func(fits func(string) bool) string {
			for {
				if u := fmt.Sprintf("user/%d", rand.Int()); fits(u) { // a '/' in the id, as ids may have
					return u
				}
			}
		}
		for _, tc := range []struct {
			name          string
			writer, check *redisbuf.Buffer
			u             string
			ok            bool
		}{
			{"same count", four, four, user(func(string) bool { return true }), true},
			{"fewer shards than written, entry beyond them", eight, four, user(func(u string) bool { return eight.ShardOf(u) >= 4 }), false},
			{"more shards than written, entry in the wrong one", four, eight, user(func(u string) bool { return eight.ShardOf(u) != four.ShardOf(u) }), false},
		} {
			t.Run(tc.name, func(t *testing.T) {
				reset(t)
				apply(t, tc.writer, tc.u, redisbuf.Entry{VideoID: "v", State: st(1000, 10)})
				err := tc.check.CheckShards(ctx)
				if tc.ok != (err == nil) {
					t.Fatalf("CheckShards = %v, want ok = %v", err, tc.ok)
				}
				if !tc.ok && !strings.Contains(err.Error(), "--redis-shards") {
					t.Fatalf("error %q does not name the flag", err)
				}
				// A refusal records nothing: the writer's count still passes.
				if err := tc.writer.CheckShards(ctx); err != nil {
					t.Fatalf("the writer's own count after the check: %v", err)
				}
			})
		}
	})
	t.Run("entries the previous release buffered order, claim and release with new ones", func(t *testing.T) {
		reset(t)
		b := newBuffer(t, c, redisbuf.Options{Shards: 2})
		u := fmt.Sprintf("user-%d", rand.Int())
		shard := b.ShardOf(u)
		// What the previous release's apply script left: the 49-byte
		// encoding, indexed in the shard's zsets.
		tag := fmt.Sprintf("kw:{kw%02d}:", shard)
		old := map[string]string{
			"a": "0000000001000|0|042.500|00001234.500|00002700.000",
			"b": "0000000001000|0|042.500|00001234.500|00002700.000",
			"c": "0000000001000|0|042.500|00001234.500|00002700.000",
		}
		for v, enc := range old {
			if err := c.HSet(ctx, tag+"u:"+u, v, enc).Err(); err != nil {
				t.Fatal(err)
			}
			for _, k := range []string{tag + "q", tag + "a"} {
				if err := c.ZAdd(ctx, k, redis.Z{Score: 1, Member: u + "/" + v}).Err(); err != nil {
					t.Fatal(err)
				}
			}
		}
		oldState := keepwatch.State{EventTime: 1000, Percent: 42.5, Position: 1234.5, Duration: 2700, Episode: keepwatch.Unknown}
		// a: the same head with a series is newer by the tie-break; b: an
		// older event with a series loses; c: untouched.
		withSeries := oldState
		withSeries.SeriesID = "s"
		older := ep(999, 99, "s", 3)
		apply(t, b, u, redisbuf.Entry{VideoID: "a", State: withSeries}, redisbuf.Entry{VideoID: "b", State: older})
		got := pendingMap(t, b, u)
		if got["a"] != withSeries || got["b"] != oldState || got["c"] != oldState {
			t.Fatalf("pending = %+v; want a with its series, b and c as buffered", got)
		}
		cl, err := b.Claim(ctx, shard, 10, time.Minute)
		if err != nil || len(cl.Entries) != 3 {
			t.Fatalf("claim = %+v, %v", cl, err)
		}
		// The release compares the buffered bytes with the claimed state
		// encoded again: an old encoding must match, or the entry would
		// stay pending for ever.
		if err := b.Release(ctx, cl, []int{0, 1, 2}, 0); err != nil {
			t.Fatal(err)
		}
		if got := pendingMap(t, b, u); len(got) != 0 {
			t.Fatalf("pending after releasing every entry = %+v", got)
		}
		drained(t)
	})
	t.Run("an erase drops what it covers, keeps what is newer, and refuses older new entries", func(t *testing.T) {
		reset(t)
		b := newBuffer(t, c, redisbuf.Options{Shards: 2})
		u := fmt.Sprintf("user-%d", rand.Int())
		other := u + "-other"
		apply(t, b, u, redisbuf.Entry{VideoID: "old", State: st(1000, 10)}, redisbuf.Entry{VideoID: "same", State: st(1500, 10)},
			redisbuf.Entry{VideoID: "new", State: ep(2000, 10, "s", 1)})
		apply(t, b, other, redisbuf.Entry{VideoID: "old", State: st(1000, 10)})
		dropped, err := b.Erase(ctx, u, 1500)
		if err != nil || dropped != 2 {
			t.Fatalf("erase = %d, %v; want 2 dropped (an event at the erase's time is erased too)", dropped, err)
		}
		want := map[string]keepwatch.State{"new": ep(2000, 10, "s", 1), "": keepwatch.EraseState(1500)}
		if got := pendingMap(t, b, u); !maps.Equal(got, want) {
			t.Fatalf("pending = %+v, want %+v", got, want)
		}
		if got := pendingMap(t, b, other); len(got) != 1 {
			t.Fatalf("another user's entries were touched: %+v", got)
		}
		// A late retry of what was erased, alone and in a group; a newer
		// event is kept, in a group with an erased one too.
		apply(t, b, u, redisbuf.Entry{VideoID: "old", State: st(1400, 90)})
		apply(t, b, u, redisbuf.Entry{VideoID: "x", State: st(1500, 1)}, redisbuf.Entry{VideoID: "y", State: st(1501, 2)},
			redisbuf.Entry{VideoID: "y", State: st(1, 3)})
		apply(t, b, u, redisbuf.Entry{VideoID: "new", State: ep(2100, 20, "s", 1)})
		want["y"] = st(1501, 2)
		want["new"] = ep(2100, 20, "s", 1)
		if got := pendingMap(t, b, u); !maps.Equal(got, want) {
			t.Fatalf("pending = %+v, want %+v", got, want)
		}
		// An older erase does not replace a newer one.
		if _, err := b.Erase(ctx, u, 1200); err != nil {
			t.Fatal(err)
		}
		if got := pendingMap(t, b, u); got[""] != keepwatch.EraseState(1500) {
			t.Fatalf("erase = %+v after an older erase, want the one at 1500", got[""])
		}
		// The erase is claimed like any entry, under the video id "", and
		// a release of it leaves the buffer (nothing left once the rest
		// is released too).
		cl, err := b.Claim(ctx, b.ShardOf(u), 10, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		var done []int
		found := false
		for i, e := range cl.Entries {
			if e.UserID == u && e.VideoID == "" {
				found = e.State == keepwatch.EraseState(1500)
			}
			if e.UserID == u {
				done = append(done, i)
			}
		}
		if !found {
			t.Fatalf("claim = %+v, want the erase at 1500", cl.Entries)
		}
		if err := b.Release(ctx, cl, done, 0); err != nil {
			t.Fatal(err)
		}
		if got := pendingMap(t, b, u); len(got) != 0 {
			t.Fatalf("pending after release = %+v", got)
		}
	})
	t.Run("an erase leaves a claimed entry's index to the claim, which then loses nothing else", func(t *testing.T) {
		reset(t)
		b := newBuffer(t, c, redisbuf.Options{Shards: 1})
		apply(t, b, "u1", redisbuf.Entry{VideoID: "a", State: st(1000, 10)})
		apply(t, b, "u2", redisbuf.Entry{VideoID: "b", State: st(1000, 10)})
		cl, err := b.Claim(ctx, 0, 10, time.Minute)
		if err != nil || len(cl.Entries) != 2 {
			t.Fatalf("claim = %+v, %v", cl, err)
		}
		if _, err := b.Erase(ctx, "u1", 5000); err != nil {
			t.Fatal(err)
		}
		// The flusher writing the batch still holds all of it: an erase
		// must not look like another flusher taking entries over.
		if n, err := b.Renew(ctx, cl, time.Minute); err != nil || n != 2 {
			t.Fatalf("renew = %d, %v; want 2", n, err)
		}
		if err := b.Release(ctx, cl, []int{0, 1}, 0); err != nil {
			t.Fatal(err)
		}
		if got := pendingMap(t, b, "u1"); len(got) != 1 || got[""] != keepwatch.EraseState(5000) {
			t.Fatalf("u1 pending = %+v, want only the erase", got)
		}
		// keepwatch erase applies the erase itself, then removes it.
		if err := b.EraseDone(ctx, "u1", 4999); err != nil {
			t.Fatal(err)
		}
		if got := pendingMap(t, b, "u1"); len(got) != 1 {
			t.Fatalf("EraseDone of another erase removed it: %+v", got)
		}
		if err := b.EraseDone(ctx, "u1", 5000); err != nil {
			t.Fatal(err)
		}
		if got := pendingMap(t, b, "u1"); len(got) != 0 {
			t.Fatalf("u1 pending = %+v", got)
		}
		drained(t)
	})
	t.Run("high-water mark refuses growth, all or nothing", func(t *testing.T) {
		reset(t)
		b := newBuffer(t, c, redisbuf.Options{Shards: 1, HighWater: 2})
		u := fmt.Sprintf("user-%d", rand.Int())
		if err := apply(t, b, u, redisbuf.Entry{VideoID: "a", State: st(1, 1)}); err != nil {
			t.Fatal(err)
		}
		err := apply(t, b, u, redisbuf.Entry{VideoID: "b", State: st(1, 1)}, redisbuf.Entry{VideoID: "c", State: st(1, 1)})
		if !errors.Is(err, keepwatch.ErrBufferFull) {
			t.Fatalf("err = %v, want ErrBufferFull", err)
		}
		if got := pendingMap(t, b, u); len(got) != 1 {
			t.Fatalf("a refused write stored something: %+v", got)
		}
		// Updating a pending entry does not grow the buffer and is accepted.
		if err := apply(t, b, u, redisbuf.Entry{VideoID: "a", State: st(2, 2)}); err != nil {
			t.Fatalf("update of a pending entry refused: %v", err)
		}
	})
}

func TestBufferSingle(t *testing.T) {
	r := testenv.StartRedis(t)
	contract(t, r.Client())
}

func TestBufferCluster(t *testing.T) {
	cl := testenv.StartRedisCluster(t)
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs()})
	t.Cleanup(func() { _ = c.Close() })
	contract(t, c)
}

// TestNewestWinsAnyOrder delivers the same events in random orders, with
// duplicates and deletes interleaved and in random groupings, and checks that
// the buffer always ends with the newest state per key.
func TestNewestWinsAnyOrder(t *testing.T) {
	r := testenv.StartRedis(t)
	c := r.Client()
	type ev struct {
		user, video string
		s           keepwatch.State
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var events []ev
	for i := range 300 {
		user := fmt.Sprintf("u%d", rng.IntN(5))
		video := fmt.Sprintf("v%d", rng.IntN(6))
		t := int64(1000 + rng.IntN(50)) // few distinct times: many ties
		s := st(t, float64(rng.IntN(5))*10)
		// The fields of series and completion break ties too; some
		// states keep the encoding of the previous release (none set).
		switch rng.IntN(4) {
		case 1:
			s.Completed = true
		case 2:
			s.SeriesID = []string{"", "s", "s1", "t"}[rng.IntN(4)]
			s.Episode = float64(rng.IntN(3)) - 1
		case 3:
			s.SeriesID, s.Episode, s.Completed = "s", float64(rng.IntN(2)), rng.IntN(2) == 0
		}
		if i%7 == 0 {
			s = del(t)
		}
		events = append(events, ev{user, video, s})
	}
	want := map[string]keepwatch.State{}
	for _, e := range events {
		k := e.user + "/" + e.video
		if cur, ok := want[k]; !ok || e.s.Newer(cur) {
			want[k] = e.s
		}
	}
	for round := range 20 {
		if err := c.FlushAll(context.Background()).Err(); err != nil {
			t.Fatal(err)
		}
		b := newBuffer(t, c, redisbuf.Options{Shards: 3})
		order := slices.Clone(events)
		order = append(order, events[:rng.IntN(len(events))]...) // duplicates
		rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		for len(order) > 0 {
			n := min(len(order), 1+rng.IntN(8))
			var ws []redisbuf.Write
			for _, e := range order[:n] {
				ws = append(ws, redisbuf.Write{UserID: e.user, Entries: []redisbuf.Entry{{VideoID: e.video, State: e.s}}})
			}
			order = order[n:]
			if _, err := b.Apply(context.Background(), ws); err != nil {
				t.Fatal(err)
			}
		}
		got := map[string]keepwatch.State{}
		for u := range 5 {
			user := fmt.Sprintf("u%d", u)
			for v, s := range pendingMap(t, b, user) {
				got[user+"/"+v] = s
			}
		}
		if len(got) != len(want) {
			t.Fatalf("round %d: %d keys, want %d", round, len(got), len(want))
		}
		for k, w := range want {
			if got[k] != w {
				t.Fatalf("round %d: %s = %+v, want %+v", round, k, got[k], w)
			}
		}
	}
}

// TestBufferEmbedded runs the contract on miniredis, the embedded Redis that
// `keepwatch dev` falls back to when no redis-server is installed.
func TestBufferEmbedded(t *testing.T) {
	m := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: m.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	contract(t, c)
}
