package edge

import (
	"hash/maphash"
	"sync"
	"time"
)

// RateConfig bounds each user's requests to one service.
type RateConfig struct {
	Limit float64 // requests per second per user, sustained; 0 disables
	Burst int     // requests a user may send at once above Limit
	Users int     // users tracked at most (memory bound)
}

// rateLimiter is a per-user token bucket kept in process memory, so it costs
// no Redis round trip. With several instances behind a load balancer each
// enforces its own bucket; a client far above the limit is still caught
// because it exceeds it on every instance.
//
// The token cache keeps each verified token's bucket (see Verifier.Attach),
// so a request reaches its bucket without a lookup here; the map below is
// consulted once per new token, and makes the tokens of one user share one
// bucket.
type rateLimiter struct {
	rate   float64 // tokens per second
	burst  float64
	seed   maphash.Seed
	per    int
	shards [64]limiterShard
}

// limiterShard maps a 64-bit hash of the user id to the user's bucket. The
// hash picks the shard and is the key, so a lookup hashes the id once and
// compares no strings. Two users whose hashes collide (about 1 in 10^9 at
// 10^5 active users, with a seed chosen per process) would share a bucket: a
// player might get a 429 a little early, never anyone else's data.
type limiterShard struct {
	mu sync.Mutex
	m  map[uint64]*Bucket
}

// Bucket is one user's token bucket; Shell.User returns it for Shell.Allow.
type Bucket struct {
	mu     sync.Mutex
	tokens float64
	last   int64 // unix ns
}

// newRateLimiter returns nil (no limit) when cfg.Limit <= 0. cfg.Users bounds
// the memory: a full shard forgets the users whose buckets have refilled.
func newRateLimiter(cfg RateConfig) *rateLimiter {
	if cfg.Limit <= 0 {
		return nil
	}
	l := &rateLimiter{rate: cfg.Limit, burst: float64(max(1, cfg.Burst)), seed: maphash.MakeSeed(), per: max(1, cfg.Users/64)}
	for i := range l.shards {
		l.shards[i].m = make(map[uint64]*Bucket)
	}
	return l
}

// bucketFor returns the user's bucket, a full one for a user it does not
// track. A bucket forgotten here while a cached token still holds it keeps
// working for that token; only a token verified afterwards starts a new one.
func (l *rateLimiter) bucketFor(user string, now time.Time) *Bucket {
	h := maphash.String(l.seed, user)
	s := &l.shards[h%uint64(len(l.shards))]
	s.mu.Lock()
	defer s.mu.Unlock()
	if b, ok := s.m[h]; ok {
		return b
	}
	if len(s.m) >= l.per {
		l.evict(s, now.UnixNano())
	}
	b := &Bucket{tokens: l.burst, last: now.UnixNano()}
	s.m[h] = b
	return b
}

// allow takes one token from b.
func (l *rateLimiter) allow(b *Bucket, now time.Time) bool {
	if l == nil {
		return true
	}
	ns := now.UnixNano()
	b.mu.Lock()
	defer b.mu.Unlock()
	if ns > b.last { // requests of one user may arrive out of order
		b.tokens = min(l.burst, b.tokens+float64(ns-b.last)/1e9*l.rate)
		b.last = ns
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// evict forgets buckets that have refilled (forgetting them changes nothing);
// if none has, it forgets some anyway, since memory is the harder bound.
func (l *rateLimiter) evict(s *limiterShard, ns int64) {
	refill := int64(l.burst / l.rate * 1e9)
	n := 0
	for k, b := range s.m {
		b.mu.Lock()
		idle := ns-b.last >= refill
		b.mu.Unlock()
		if idle {
			delete(s.m, k)
			n++
		}
	}
	if n > 0 {
		return
	}
	for k := range s.m {
		delete(s.m, k)
		if n++; n >= max(1, l.per/8) {
			return
		}
	}
}
