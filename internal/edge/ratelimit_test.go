package edge

import (
	"fmt"
	"hash/maphash"
	"testing"
	"time"
)

// usersInShard returns n user ids that land in the same limiter shard as
// first.
func usersInShard(l *rateLimiter, first string, n int) []string {
	want := maphash.String(l.seed, first) % uint64(len(l.shards))
	var out []string
	for i := 0; len(out) < n; i++ {
		u := fmt.Sprintf("user-%d", i)
		if maphash.String(l.seed, u)%uint64(len(l.shards)) == want {
			out = append(out, u)
		}
	}
	return out
}

// TestLimiterEvictionKeepsLimitedUsers: a full shard forgets users whose
// buckets have refilled, never one that is being limited right now, so a
// client cannot shake off its limit by making other users' entries crowd it
// out; and the shard never grows past its bound.
func TestLimiterEvictionKeepsLimitedUsers(t *testing.T) {
	l := newRateLimiter(RateConfig{Limit: 1, Burst: 2, Users: 64 * 4}) // 4 users per shard
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	limited := "limited-user"
	others := usersInShard(l, limited, 20)
	shard := &l.shards[maphash.String(l.seed, limited)%uint64(len(l.shards))]

	// Three users seen an hour ago: their buckets have refilled since.
	for _, u := range others[:3] {
		l.bucketFor(u, t0.Add(-time.Hour))
	}
	// The limited user empties its bucket now.
	b := l.bucketFor(limited, t0)
	for l.allow(b, t0) {
	}
	// A new user arrives in the full shard: the idle ones go, the limited
	// one stays, with its empty bucket.
	l.bucketFor(others[3], t0.Add(time.Millisecond))
	if got := l.bucketFor(limited, t0.Add(2*time.Millisecond)); got != b || l.allow(got, t0.Add(2*time.Millisecond)) {
		t.Fatal("the limited user was forgotten (or refilled) when the shard made room")
	}
	for _, u := range others[:3] {
		if _, ok := shard.m[maphash.String(l.seed, u)]; ok {
			t.Errorf("idle user %s kept while the shard was full", u)
		}
	}

	// Nobody idle: memory is the harder bound, so some go anyway, and the
	// shard stays within its bound however many users come.
	for i, u := range others[4:] {
		now := t0.Add(time.Duration(3+i) * time.Millisecond)
		l.allow(l.bucketFor(u, now), now)
		if len(shard.m) > l.per {
			t.Fatalf("shard holds %d users, bound %d", len(shard.m), l.per)
		}
	}
}

// TestLimiterRefillsAtTheRate: a bucket gives its burst at once, then one
// request per 1/rate, and a request that arrives out of order does not
// refill it.
func TestLimiterRefillsAtTheRate(t *testing.T) {
	l := newRateLimiter(RateConfig{Limit: 2, Burst: 3, Users: 1000})
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	b := l.bucketFor("u", t0)
	for i := range 3 {
		if !l.allow(b, t0) {
			t.Fatalf("request %d of the burst refused", i+1)
		}
	}
	if l.allow(b, t0) || l.allow(b, t0.Add(-time.Second)) {
		t.Fatal("a fourth request at once (or one from the past) allowed")
	}
	if l.allow(b, t0.Add(400*time.Millisecond)) {
		t.Fatal("allowed before half a second passed at 2/s")
	}
	if !l.allow(b, t0.Add(500*time.Millisecond)) {
		t.Fatal("refused after half a second at 2/s")
	}
	if newRateLimiter(RateConfig{Limit: 0}) != nil || !(*rateLimiter)(nil).allow(nil, t0) {
		t.Fatal("a zero limit must turn the limiter off")
	}
}
