// Package auth verifies and mints the HS256 bearer tokens players and
// frontends send. The user is the token's subject.
//
// A player sends the same token every 10 seconds for hours, so a verified
// token is cached until it expires: the HMAC, base64 and JSON work is done once
// per token instead of once per request.
package auth

import (
	"errors"
	"fmt"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepwatch/keepwatch"
)

// Verifier checks tokens against one or more secrets (rotation: every listed
// secret verifies; the first one signs new tokens).
type Verifier struct {
	keys   jwt.VerificationKeySet
	parser *jwt.Parser
	now    func() time.Time
	cache  *tokenCache
	attach func(user string) any
	// verifications counts full verifications (HMAC and claims): every
	// token the cache could not answer.
	verifications atomic.Uint64
}

// NewVerifier returns a verifier for secrets, caching up to cacheSize verified
// tokens (0 disables the cache).
func NewVerifier(secrets []string, cacheSize int) (*Verifier, error) {
	var ks jwt.VerificationKeySet
	for _, s := range secrets {
		if s == "" {
			continue
		}
		ks.Keys = append(ks.Keys, []byte(s))
	}
	if len(ks.Keys) == 0 {
		return nil, errors.New("auth: at least one non-empty secret is required (--auth-secret)")
	}
	v := &Verifier{keys: ks, now: time.Now}
	v.parser = jwt.NewParser(
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithExpirationRequired(),
		jwt.WithTimeFunc(func() time.Time { return v.now() }),
	)
	if cacheSize > 0 {
		v.cache = newTokenCache(cacheSize)
	}
	return v, nil
}

// SetClock replaces the clock, for tests.
func (v *Verifier) SetClock(now func() time.Time) { v.now = now }

// Verify checks a token and returns its user. Every failure is a
// *keepwatch.Error with code EUNAUTHORIZED.
func (v *Verifier) Verify(token []byte) (string, error) {
	return v.VerifyAt(token, v.now())
}

// VerifyAt is Verify at a time the caller already read (the request's
// receive time), saving a clock read on the request path.
func (v *Verifier) VerifyAt(token []byte, now time.Time) (string, error) {
	user, _, err := v.VerifyData(token, now)
	return user, err
}

// Attach makes the verifier keep fn(user) with each verified token, for
// VerifyData to return. The command API keeps the user's rate-limit bucket
// there: a request then finds its user and its bucket in one cache lookup
// instead of one lookup each. Call Attach before the verifier is used.
func (v *Verifier) Attach(fn func(user string) any) { v.attach = fn }

// VerifyData is VerifyAt that also returns what Attach's function gave for
// the token's user (nil without Attach). While the token stays cached, every
// request gets the same value, computed once; with the cache off it is
// computed on every call.
func (v *Verifier) VerifyData(token []byte, now time.Time) (string, any, error) {
	if v.cache != nil {
		if e, ok := v.cache.get(token); ok {
			if now.Unix() < e.exp {
				return e.user(), e.data, nil
			}
			v.cache.remove(token)
			return "", nil, &keepwatch.Error{Code: keepwatch.EUNAUTHORIZED, Message: "the token has expired"}
		}
	}
	user, exp, err := v.parse(token)
	if err != nil {
		return "", nil, err
	}
	var data any
	if v.attach != nil {
		data = v.attach(user)
	}
	if v.cache != nil {
		v.cache.put(string(token), user, exp, data)
	}
	return user, data, nil
}

// parse verifies a token's signature and claims, returning its user and
// expiry (unix seconds).
func (v *Verifier) parse(token []byte) (string, int64, error) {
	v.verifications.Add(1)
	var claims jwt.RegisteredClaims
	_, err := v.parser.ParseWithClaims(string(token), &claims, func(*jwt.Token) (any, error) { return v.keys, nil })
	if err != nil {
		msg := "a valid bearer token is required"
		if errors.Is(err, jwt.ErrTokenExpired) {
			msg = "the token has expired"
		}
		return "", 0, &keepwatch.Error{Code: keepwatch.EUNAUTHORIZED, Message: msg, Err: err}
	}
	if !keepwatch.ValidUserID(claims.Subject) {
		return "", 0, &keepwatch.Error{Code: keepwatch.EUNAUTHORIZED, Message: "the token's sub must be a user id of 1–128 printable bytes"}
	}
	return claims.Subject, claims.ExpiresAt.Unix(), nil
}

// Collectors returns the verifier's metrics: the full verifications done and
// the tokens cached (the registerer they go to adds the service label).
// Verifications that keep pace with requests mean the cache is too small
// (--token-cache-size) or players do not reuse their tokens; each costs about
// 4 µs where a hit costs 0.1. Both are read when scraped, so they cost
// requests nothing.
func (v *Verifier) Collectors() []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keepwatch_token_verifications_total",
			Help: "Bearer tokens verified in full (signature and claims) because the token cache could not answer."},
			func() float64 { return float64(v.verifications.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keepwatch_token_cache_entries",
			Help: "Verified tokens in the cache (at most --token-cache-size)."},
			func() float64 { return float64(v.cache.len()) }),
	}
}

// Mint signs a token for user, valid for ttl, with secret.
func Mint(secret, user string, ttl time.Duration) (string, error) {
	if secret == "" {
		return "", errors.New("mint token: empty secret")
	}
	if !keepwatch.ValidUserID(user) {
		return "", fmt.Errorf("mint token: invalid user id %q", user)
	}
	now := time.Now()
	t := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
		Subject:   user,
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
	})
	s, err := t.SignedString([]byte(secret))
	if err != nil {
		return "", fmt.Errorf("mint token: %w", err)
	}
	return s, nil
}

// tokenCache maps verified tokens to their user, expiry and attached data. It
// is sharded to keep lock contention off the request path and bounded: a full
// shard drops arbitrary entries (Go map iteration order), which only costs a
// re-verify. Entries are keyed by a 64-bit hash of the token, computed once
// per lookup for both the shard and the key (hashing a ~200-byte string key
// twice showed in the profile); the stored token is compared in full, so a
// collision is a miss, never another user.
type tokenCache struct {
	seed   maphash.Seed
	shards [64]cacheShard
	per    int
}

type cacheShard struct {
	mu sync.RWMutex
	m  map[uint64]cacheEntry
}

// cacheEntry keeps the token and its user in one string, so the full-token
// compare and the later reads of the user touch one allocation: with many
// players these are cache misses, and they showed in the profile.
type cacheEntry struct {
	tokenUser string // the token, then the user
	tokenLen  int
	exp       int64
	data      any
}

func (e *cacheEntry) token() string { return e.tokenUser[:e.tokenLen] }
func (e *cacheEntry) user() string  { return e.tokenUser[e.tokenLen:] }

func newTokenCache(size int) *tokenCache {
	c := &tokenCache{seed: maphash.MakeSeed(), per: max(1, size/64)}
	for i := range c.shards {
		c.shards[i].m = make(map[uint64]cacheEntry)
	}
	return c
}

func (c *tokenCache) locate(token []byte) (*cacheShard, uint64) {
	h := maphash.Bytes(c.seed, token)
	return &c.shards[h%uint64(len(c.shards))], h
}

func (c *tokenCache) get(token []byte) (cacheEntry, bool) {
	s, h := c.locate(token)
	s.mu.RLock()
	e, ok := s.m[h]
	s.mu.RUnlock()
	if !ok || e.token() != string(token) {
		return cacheEntry{}, false
	}
	return e, true
}

func (c *tokenCache) put(token, user string, exp int64, data any) {
	s, h := c.locate([]byte(token))
	s.mu.Lock()
	if len(s.m) >= c.per {
		n := 0
		for k := range s.m {
			delete(s.m, k)
			if n++; n >= max(1, c.per/8) {
				break
			}
		}
	}
	s.m[h] = cacheEntry{tokenUser: token + user, tokenLen: len(token), exp: exp, data: data}
	s.mu.Unlock()
}

// len counts the cached tokens (0 without a cache).
func (c *tokenCache) len() int {
	if c == nil {
		return 0
	}
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}

func (c *tokenCache) remove(token []byte) {
	s, h := c.locate(token)
	s.mu.Lock()
	if e, ok := s.m[h]; ok && e.token() == string(token) {
		delete(s.m, h)
	}
	s.mu.Unlock()
}
