package auth_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/keepwatch/keepwatch"
	"github.com/keepwatch/keepwatch/internal/auth"
)

func newVerifier(t testing.TB, cacheSize int, secrets ...string) *auth.Verifier {
	t.Helper()
	v, err := auth.NewVerifier(secrets, cacheSize)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func mint(t testing.TB, secret, user string, ttl time.Duration) string {
	t.Helper()
	tok, err := auth.Mint(secret, user, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// unauthorized fails unless err is a *keepwatch.Error with EUNAUTHORIZED.
func unauthorized(t *testing.T, err error) *keepwatch.Error {
	t.Helper()
	var ke *keepwatch.Error
	if !errors.As(err, &ke) || ke.Code != keepwatch.EUNAUTHORIZED {
		t.Fatalf("error %v, want code %s", err, keepwatch.EUNAUTHORIZED)
	}
	return ke
}

func TestNewVerifierNeedsASecret(t *testing.T) {
	for _, secrets := range [][]string{nil, {}, {""}, {"", ""}} {
		if _, err := auth.NewVerifier(secrets, 10); err == nil {
			t.Errorf("NewVerifier(%q) accepted no secret", secrets)
		}
	}
}

func TestMintRoundTrip(t *testing.T) {
	for _, cacheSize := range []int{0, 100} {
		v := newVerifier(t, cacheSize, "s1")
		for _, user := range []string{"u", "user-42", "ünïcode user", strings.Repeat("x", keepwatch.MaxUserIDLen)} {
			got, err := v.Verify([]byte(mint(t, "s1", user, time.Hour)))
			if err != nil || got != user {
				t.Fatalf("cache %d: Verify = %q, %v; want %q", cacheSize, got, err, user)
			}
		}
	}
	for _, tc := range []struct{ secret, user string }{
		{"", "u"}, {"s1", ""}, {"s1", "a\nb"}, {"s1", strings.Repeat("x", keepwatch.MaxUserIDLen+1)},
	} {
		if _, err := auth.Mint(tc.secret, tc.user, time.Hour); err == nil {
			t.Errorf("Mint(%q, %q) succeeded", tc.secret, tc.user)
		}
	}
}

func TestRotation(t *testing.T) {
	for _, cacheSize := range []int{0, 100} {
		v := newVerifier(t, cacheSize, "new", "old", "")
		for _, secret := range []string{"new", "old"} {
			if u, err := v.Verify([]byte(mint(t, secret, "u-"+secret, time.Hour))); err != nil || u != "u-"+secret {
				t.Fatalf("cache %d: token signed with %q: %q, %v", cacheSize, secret, u, err)
			}
		}
		_, err := v.Verify([]byte(mint(t, "retired", "u", time.Hour)))
		unauthorized(t, err)
	}
}

func TestCacheHitReturnsTheSameUser(t *testing.T) {
	v := newVerifier(t, 100, "s1")
	tokA, tokB := []byte(mint(t, "s1", "alice", time.Hour)), []byte(mint(t, "s1", "bob", time.Hour))
	for range 3 {
		if u, err := v.Verify(tokA); err != nil || u != "alice" {
			t.Fatalf("alice: %q, %v", u, err)
		}
		if u, err := v.Verify(tokB); err != nil || u != "bob" {
			t.Fatalf("bob: %q, %v", u, err)
		}
	}
	// A hit does no parsing or HMAC: it allocates nothing, where a verify
	// allocates for the JSON and base64 work.
	if n := testing.AllocsPerRun(100, func() { _, _ = v.Verify(tokA) }); n != 0 {
		t.Fatalf("a cached verify allocates %v times: not a cache hit", n)
	}
	uncached := newVerifier(t, 0, "s1")
	if n := testing.AllocsPerRun(10, func() { _, _ = uncached.Verify(tokA) }); n == 0 {
		t.Fatalf("an uncached verify allocates nothing: the check above proves nothing")
	}
	// The cache keys on the whole token: a token whose signature differs is
	// not answered from the cache.
	forged := append([]byte(nil), tokA...)
	forged[len(forged)-2] ^= 1
	_, err := v.Verify(forged)
	unauthorized(t, err)
}

// TestAttachedDataFollowsTheToken: what Attach computes for a user comes back
// with each of the user's tokens, computed once per token while it is cached,
// and a refused token gets none of it.
func TestAttachedDataFollowsTheToken(t *testing.T) {
	for _, cacheSize := range []int{0, 100} {
		v := newVerifier(t, cacheSize, "s1")
		calls := map[string]int{}
		v.Attach(func(user string) any {
			calls[user]++
			return "data of " + user
		})
		alice, bob := []byte(mint(t, "s1", "alice", time.Hour)), []byte(mint(t, "s1", "bob", time.Hour))
		for range 3 {
			for _, tc := range []struct {
				tok  []byte
				user string
			}{{alice, "alice"}, {bob, "bob"}} {
				u, data, err := v.VerifyData(tc.tok, time.Now())
				if err != nil || u != tc.user || data != "data of "+tc.user {
					t.Fatalf("cache %d: VerifyData = %q, %v, %v; want %q and its data", cacheSize, u, data, err, tc.user)
				}
			}
		}
		want := 1
		if cacheSize == 0 {
			want = 3
		}
		if calls["alice"] != want || calls["bob"] != want {
			t.Errorf("cache %d: attach ran %v; want %d per user", cacheSize, calls, want)
		}
		forged := append([]byte(nil), alice...)
		forged[len(forged)-2] ^= 1
		if _, data, err := v.VerifyData(forged, time.Now()); err == nil || data != nil {
			t.Errorf("cache %d: forged token: data %v, err %v", cacheSize, data, err)
		}
	}
}

func TestExpiredCachedTokenIsRefused(t *testing.T) {
	now := time.Now()
	for _, cacheSize := range []int{0, 100} {
		v := newVerifier(t, cacheSize, "s1")
		v.SetClock(func() time.Time { return now })
		tok := []byte(mint(t, "s1", "u", time.Hour))
		if u, err := v.Verify(tok); err != nil || u != "u" {
			t.Fatalf("cache %d: fresh token: %q, %v", cacheSize, u, err)
		}
		v.SetClock(func() time.Time { return now.Add(time.Hour + 2*time.Second) })
		for range 2 { // the second is after the cache dropped the token
			u, err := v.Verify(tok)
			if u != "" {
				t.Fatalf("cache %d: an expired token gave user %q", cacheSize, u)
			}
			if ke := unauthorized(t, err); !strings.Contains(ke.Message, "expired") {
				t.Errorf("cache %d: message %q does not say expired", cacheSize, ke.Message)
			}
		}
		// Back before the expiry (a clock step back), the token verifies again.
		v.SetClock(func() time.Time { return now })
		if u, err := v.Verify(tok); err != nil || u != "u" {
			t.Fatalf("cache %d: token after the clock went back: %q, %v", cacheSize, u, err)
		}
	}
}

func TestRefused(t *testing.T) {
	exp := time.Now().Add(time.Hour).Unix()
	sign := func(m jwt.SigningMethod, secret string, c jwt.MapClaims) string {
		s, err := jwt.NewWithClaims(m, c).SignedString([]byte(secret))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	valid := mint(t, "s1", "u", time.Hour)
	parts := strings.Split(valid, ".")
	other := strings.Split(sign(jwt.SigningMethodHS256, "s1", jwt.MapClaims{"sub": "v", "exp": exp}), ".")
	none, err := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{"sub": "u", "exp": exp}).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]string{
		"none method":    none,
		"empty":          "",
		"garbage":        "not-a-token",
		"wrong secret":   mint(t, "s2", "u", time.Hour),
		"expired":        mint(t, "s1", "u", -time.Second),
		"alg none":       "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0." + parts[1] + ".",
		"HS512":          sign(jwt.SigningMethodHS512, "s1", jwt.MapClaims{"sub": "u", "exp": exp}),
		"no exp":         sign(jwt.SigningMethodHS256, "s1", jwt.MapClaims{"sub": "u"}),
		"no sub":         sign(jwt.SigningMethodHS256, "s1", jwt.MapClaims{"exp": exp}),
		"sub too long":   sign(jwt.SigningMethodHS256, "s1", jwt.MapClaims{"sub": strings.Repeat("x", 129), "exp": exp}),
		"swapped claims": parts[0] + "." + other[1] + "." + parts[2],
		"two parts":      parts[0] + "." + parts[1],
		"four parts":     valid + ".x",
	}
	for _, cacheSize := range []int{0, 100} {
		v := newVerifier(t, cacheSize, "s1")
		if _, err := v.Verify([]byte(valid)); err != nil { // warm the cache
			t.Fatal(err)
		}
		for name, tok := range cases {
			t.Run(name, func(t *testing.T) {
				u, err := v.Verify([]byte(tok))
				if u != "" {
					t.Errorf("user %q", u)
				}
				unauthorized(t, err)
			})
		}
	}
}

func BenchmarkVerify(b *testing.B) {
	tok := []byte(mint(b, "s1", "user-1", time.Hour))
	for _, tc := range []struct {
		name  string
		cache int
	}{{"cached", 1 << 16}, {"uncached", 0}} {
		b.Run(tc.name, func(b *testing.B) {
			v := newVerifier(b, tc.cache, "s1")
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := v.Verify(tok); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
