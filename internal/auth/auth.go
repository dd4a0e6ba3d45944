// Package auth verifies and mints the HS256 bearer tokens players and
// frontends send. The user is the token's subject.
//
// A player sends the same token every 10 seconds for hours, so a verified
// token is cached until it expires: the HMAC, base64 and JSON work is done once
// per token instead of once per request.
package auth

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepwatch/keepwatch"
	"github.com/keepwatch/keepwatch/internal/ijson"
)

// Verifier checks tokens against one or more secrets (rotation: every listed
// secret verifies; the first one signs new tokens).
type Verifier struct {
	keys   jwt.VerificationKeySet
	parser *jwt.Parser
	opts   Options
	now    func() time.Time
	cache  *tokenCache
	attach func(user string) any
	// verifications counts full verifications (HMAC and claims): every
	// token the cache could not answer.
	verifications atomic.Uint64
}

// Options are a Verifier's secrets and the checks it makes besides the
// signature, exp and sub.
type Options struct {
	// Secrets verify tokens; the first signs new ones (rotation). Empty
	// entries are skipped; at least one secret is required.
	Secrets []string
	// CacheSize is how many verified tokens are kept (0: verify every
	// request).
	CacheSize int
	// Issuer, when set, must equal the token's iss.
	Issuer string
	// Audience, when set, must be the token's aud or one of its entries.
	Audience string
	// MaxTTL, when set, bounds exp − iat, and iat is then required: a token
	// minted to live for years is refused even while it is unexpired.
	MaxTTL time.Duration
	// Leeway is how far in the future iat and nbf may lie, for an issuer
	// whose clock runs ahead of ours. exp gets none.
	Leeway time.Duration
}

// DefaultLeeway is the leeway of NewVerifier and of the --auth-leeway flag.
const DefaultLeeway = time.Minute

// New returns a verifier with opts.
func New(opts Options) (*Verifier, error) {
	var ks jwt.VerificationKeySet
	for _, s := range opts.Secrets {
		if s == "" {
			continue
		}
		ks.Keys = append(ks.Keys, []byte(s))
	}
	switch {
	case len(ks.Keys) == 0:
		return nil, errors.New("auth: at least one non-empty secret is required (--auth-secret)")
	case opts.CacheSize < 0:
		return nil, errors.New("auth: --token-cache-size must not be negative")
	case opts.MaxTTL < 0:
		return nil, errors.New("auth: --auth-max-ttl must not be negative")
	case opts.Leeway < 0:
		return nil, errors.New("auth: --auth-leeway must not be negative")
	}
	v := &Verifier{keys: ks, opts: opts, now: time.Now}
	// The library checks the signature and the algorithm; the claims are
	// read here (see claims), where each must be exactly right.
	v.parser = jwt.NewParser(
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithStrictDecoding(),
		jwt.WithoutClaimsValidation(),
	)
	if opts.CacheSize > 0 {
		v.cache = newTokenCache(opts.CacheSize)
	}
	return v, nil
}

// NewVerifier is New with secrets, a cache of cacheSize tokens and the
// default leeway.
func NewVerifier(secrets []string, cacheSize int) (*Verifier, error) {
	return New(Options{Secrets: secrets, CacheSize: cacheSize, Leeway: DefaultLeeway})
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

var (
	errExpired  = &keepwatch.Error{Code: keepwatch.EUNAUTHORIZED, Message: "the token has expired"}
	errNotYet   = &keepwatch.Error{Code: keepwatch.EUNAUTHORIZED, Message: "the token is not valid yet (its nbf or iat is in the future)"}
	errBadToken = &keepwatch.Error{Code: keepwatch.EUNAUTHORIZED, Message: "a valid bearer token is required"}
)

// VerifyData is VerifyAt that also returns what Attach's function gave for
// the token's user (nil without Attach). While the token stays cached, every
// request gets the same value, computed once; with the cache off it is
// computed on every call. A cached token skips no check: the cache holds
// only tokens that passed every one, and the times (exp, nbf, iat) are
// checked again on every hit.
func (v *Verifier) VerifyData(token []byte, now time.Time) (string, any, error) {
	ms := now.UnixMilli()
	if v.cache != nil {
		if e, ok := v.cache.get(token); ok {
			switch {
			case ms >= e.exp:
				v.cache.remove(token)
				return "", nil, errExpired
			case ms < e.notBefore:
				return "", nil, errNotYet
			}
			return e.user(), e.data, nil
		}
	}
	c, err := v.parse(token)
	if err != nil {
		return "", nil, err
	}
	switch {
	case ms >= c.exp:
		return "", nil, errExpired
	case ms < c.notBefore:
		return "", nil, errNotYet
	}
	var data any
	if v.attach != nil {
		data = v.attach(c.user)
	}
	if v.cache != nil {
		v.cache.put(string(token), c.user, c.notBefore, c.exp, data)
	}
	return c.user, data, nil
}

// checked is what a token that passed every check but the clock says: its
// user and the span it is valid in, [notBefore, exp) in unix ms, the leeway
// taken off notBefore.
type checked struct {
	user           string
	notBefore, exp int64
}

// parse verifies a token's form, signature and claims.
func (v *Verifier) parse(token []byte) (checked, error) {
	v.verifications.Add(1)
	// base64url has one spelling per value only without padding, without
	// the line breaks Go's decoder skips, and with the unused bits of the
	// last character zero (strict decoding): otherwise several tokens carry
	// one signature.
	if !canonical(token) {
		return checked{}, errBadToken
	}
	header, _, _ := strings.Cut(string(token), ".")
	hb, err := segment.DecodeString(header)
	if err != nil {
		return checked{}, errBadToken
	}
	if err := v.checkHeader(hb); err != nil {
		return checked{}, err
	}
	var raw rawClaims
	if _, err := v.parser.ParseWithClaims(string(token), &raw, func(*jwt.Token) (any, error) { return v.keys, nil }); err != nil {
		return checked{}, &keepwatch.Error{Code: keepwatch.EUNAUTHORIZED, Message: errBadToken.Message, Err: err}
	}
	return v.claims(raw.b)
}

// segment decodes a token's segments as the library does with strict
// decoding.
var segment = base64.RawURLEncoding.Strict()

// canonical reports whether token is three base64url segments: only the
// alphabet's 64 characters and two dots.
func canonical(token []byte) bool {
	dots := 0
	for _, c := range token {
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
		case c == '.':
			dots++
		default:
			return false
		}
	}
	return dots == 2
}

// checkHeader refuses a header that is not I-JSON or names critical
// extensions: RFC 7515 §4.1.11 requires refusing a token whose crit lists
// an extension the verifier does not implement, and keepwatch implements
// none. (The library checks alg.)
func (v *Verifier) checkHeader(b []byte) error {
	if ijson.Check(b, len(b)) != nil {
		return errBadToken
	}
	var h map[string]json.RawMessage
	if err := json.Unmarshal(b, &h); err != nil {
		return errBadToken
	}
	if _, ok := h["crit"]; ok {
		return &keepwatch.Error{Code: keepwatch.EUNAUTHORIZED, Message: "the token's header has crit: keepwatch implements no JWS extension"}
	}
	return nil
}

// rawClaims keeps the claims as sent, for claims to read: the library's
// NumericDate takes "1798000000" (a string) for a number, and encoding/json
// would fill sub from "SUB".
type rawClaims struct{ b []byte }

func (r *rawClaims) UnmarshalJSON(b []byte) error {
	r.b = append(r.b[:0], b...)
	return nil
}

// The library asks for these only when it validates claims, which it is
// told not to do.
func (*rawClaims) GetExpirationTime() (*jwt.NumericDate, error) { return nil, nil }
func (*rawClaims) GetIssuedAt() (*jwt.NumericDate, error)       { return nil, nil }
func (*rawClaims) GetNotBefore() (*jwt.NumericDate, error)      { return nil, nil }
func (*rawClaims) GetIssuer() (string, error)                   { return "", nil }
func (*rawClaims) GetSubject() (string, error)                  { return "", nil }
func (*rawClaims) GetAudience() (jwt.ClaimStrings, error)       { return nil, nil }

// registered are the claims keepwatch reads.
var registered = [...]string{"sub", "exp", "nbf", "iat", "iss", "aud"}

// claims checks a signed token's claims.
func (v *Verifier) claims(b []byte) (checked, error) {
	if ijson.Check(b, len(b)) != nil {
		return checked{}, errBadToken
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return checked{}, errBadToken
	}
	for k := range m {
		for _, r := range registered {
			if k != r && strings.EqualFold(k, r) {
				return checked{}, &keepwatch.Error{Code: keepwatch.EUNAUTHORIZED,
					Message: "the token has the claim " + ijson.QuoteKey(k) + ", which differs from " + r + " only in case"}
			}
		}
	}
	var c checked
	sub, ok := jsonString(m["sub"])
	if !ok || !keepwatch.ValidUserID(sub) {
		return checked{}, &keepwatch.Error{Code: keepwatch.EUNAUTHORIZED, Message: "the token's sub must be a user id of 1–128 bytes of UTF-8 with no control characters"}
	}
	c.user = sub
	exp, okExp := numericDate(m["exp"], true)
	nbf, okNbf := numericDate(m["nbf"], false)
	iat, okIat := numericDate(m["iat"], false)
	if !okExp || !okNbf || !okIat {
		return checked{}, &keepwatch.Error{Code: keepwatch.EUNAUTHORIZED, Message: "the token's exp (required), nbf and iat must be JSON numbers"}
	}
	if v.opts.Issuer != "" {
		if iss, ok := jsonString(m["iss"]); !ok || iss != v.opts.Issuer {
			return checked{}, &keepwatch.Error{Code: keepwatch.EUNAUTHORIZED, Message: "the token's iss is not the issuer this service trusts"}
		}
	}
	if v.opts.Audience != "" && !audience(m["aud"], v.opts.Audience) {
		return checked{}, &keepwatch.Error{Code: keepwatch.EUNAUTHORIZED, Message: "the token's aud does not name this service"}
	}
	if v.opts.MaxTTL > 0 {
		switch {
		case m["iat"] == nil:
			return checked{}, &keepwatch.Error{Code: keepwatch.EUNAUTHORIZED, Message: "the token needs iat: its lifetime is bounded"}
		case exp-iat > v.opts.MaxTTL.Seconds():
			return checked{}, &keepwatch.Error{Code: keepwatch.EUNAUTHORIZED, Message: "the token lives longer (exp − iat) than this service allows"}
		}
	}
	c.exp = millis(exp)
	c.notBefore = millis(max(nbf, iat)) - v.opts.Leeway.Milliseconds()
	return c, nil
}

// jsonString reads a JSON string.
func jsonString(raw json.RawMessage) (string, bool) {
	var s string
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

// numericDate reads a NumericDate (RFC 7519 §2): a JSON number of seconds
// since the epoch; absent is 0 unless required.
func numericDate(raw json.RawMessage, required bool) (float64, bool) {
	if raw == nil {
		return 0, !required
	}
	if raw[0] != '-' && (raw[0] < '0' || raw[0] > '9') {
		return 0, false
	}
	f, err := strconv.ParseFloat(string(raw), 64)
	return f, err == nil
}

// audience reports whether aud, a string or an array of strings, names want.
func audience(raw json.RawMessage, want string) bool {
	if s, ok := jsonString(raw); ok {
		return s == want
	}
	var list []json.RawMessage
	if len(raw) == 0 || raw[0] != '[' || json.Unmarshal(raw, &list) != nil {
		return false
	}
	found := false
	for _, e := range list {
		s, ok := jsonString(e)
		if !ok {
			return false
		}
		found = found || s == want
	}
	return found
}

// millis converts seconds to ms, saturating far from overflow.
func millis(sec float64) int64 {
	const limit = 1 << 60
	return int64(max(-limit, min(limit, math.Floor(sec*1000))))
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
	return MintFor(secret, user, ttl, "", "")
}

// MintFor is Mint with the iss and aud claims a verifier with an Issuer or an
// Audience wants ("" leaves the claim out).
func MintFor(secret, user string, ttl time.Duration, issuer, audience string) (string, error) {
	if secret == "" {
		return "", errors.New("mint token: empty secret")
	}
	if !keepwatch.ValidUserID(user) {
		return "", fmt.Errorf("mint token: invalid user id %q", user)
	}
	now := time.Now()
	claims := jwt.RegisteredClaims{
		Subject:   user,
		Issuer:    issuer,
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
	}
	if audience != "" {
		claims.Audience = jwt.ClaimStrings{audience}
	}
	t := jwt.NewWithClaims(jwt.SigningMethodHS256, claims)
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
	tokenUser      string // the token, then the user
	tokenLen       int
	notBefore, exp int64 // unix ms: the token is valid in [notBefore, exp)
	data           any
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

func (c *tokenCache) put(token, user string, notBefore, exp int64, data any) {
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
	s.m[h] = cacheEntry{tokenUser: token + user, tokenLen: len(token), notBefore: notBefore, exp: exp, data: data}
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
