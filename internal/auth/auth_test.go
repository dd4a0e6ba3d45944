package auth_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"
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

const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// signSegments signs header.payload (as spelled) with secret.
func signSegments(secret, header, payload string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(header + "." + payload))
	return header + "." + payload + "." + b64(m.Sum(nil))
}

// hand builds a token from raw header and claims bytes, signed with "s1".
func hand(header, claims string) string {
	return signSegments("s1", b64([]byte(header)), b64([]byte(claims)))
}

// respell sets an unused low bit of a base64url segment's last character:
// the same bytes, decoded leniently, from another spelling. ok is false when
// the segment has no unused bit (its length is a multiple of 4 characters).
func respell(seg string, bit int) (string, bool) {
	unused := map[int]int{2: 4, 3: 2}[len(seg)%4]
	if bit >= unused {
		return "", false
	}
	last := strings.IndexByte(alphabet, seg[len(seg)-1])
	return seg[:len(seg)-1] + string(alphabet[last^(1<<bit)]), true
}

// TestTokenRules checks, on tokens whose every byte the test controls, what
// a verifier accepts: exactly one spelling of each token, numeric times, no
// crit, a UTF-8 subject, and the optional issuer, audience and lifetime.
func TestTokenRules(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	at := func(d time.Duration) string { return strconv.FormatInt(now.Add(d).Unix(), 10) }
	exp := at(time.Hour)
	const hs = `{"alg":"HS256","typ":"JWT"}`
	claims := func(extra string) string { return `{"sub":"u","exp":` + exp + extra + `}` }
	strict := auth.Options{Secrets: []string{"s1"}, Leeway: time.Minute, Issuer: "https://id.example", Audience: "keepwatch", MaxTTL: 2 * time.Hour}
	plain := auth.Options{Secrets: []string{"s1"}, Leeway: time.Minute}
	withIss := func(extra string) string {
		return `{"sub":"u","iss":"https://id.example","aud":"keepwatch","iat":` + at(0) + `,"exp":` + exp + extra + `}`
	}
	cases := []struct {
		name  string
		opts  auth.Options
		token string
		user  string // "" when refused
	}{
		{"plain", plain, hand(hs, claims("")), "u"},
		{"exp with a fraction", plain, hand(hs, `{"sub":"u","exp":`+exp+`.5}`), "u"},
		{"exp with an exponent", plain, hand(hs, `{"sub":"u","exp":1.9e9}`), "u"},
		{"exp a string", plain, hand(hs, `{"sub":"u","exp":"`+exp+`"}`), ""},
		{"exp null", plain, hand(hs, `{"sub":"u","exp":null}`), ""},
		{"exp true", plain, hand(hs, `{"sub":"u","exp":true}`), ""},
		{"exp overflowing", plain, hand(hs, `{"sub":"u","exp":1e999}`), ""},
		{"exp missing", plain, hand(hs, `{"sub":"u"}`), ""},
		{"exp past", plain, hand(hs, `{"sub":"u","exp":`+at(-time.Second)+`}`), ""},
		{"exp now", plain, hand(hs, `{"sub":"u","exp":`+at(0)+`}`), ""},
		{"nbf a string", plain, hand(hs, claims(`,"nbf":"`+at(0)+`"`)), ""},
		{"iat a string", plain, hand(hs, claims(`,"iat":"`+at(0)+`"`)), ""},
		{"iat an array", plain, hand(hs, claims(`,"iat":[`+at(0)+`]`)), ""},
		{"iat now", plain, hand(hs, claims(`,"iat":`+at(0))), "u"},
		{"iat within the leeway", plain, hand(hs, claims(`,"iat":`+at(time.Minute))), "u"},
		{"iat past the leeway", plain, hand(hs, claims(`,"iat":`+at(time.Minute+time.Second))), ""},
		{"nbf within the leeway", plain, hand(hs, claims(`,"nbf":`+at(time.Minute))), "u"},
		{"nbf past the leeway", plain, hand(hs, claims(`,"nbf":`+at(2*time.Minute))), ""},
		{"iat in the future without leeway", auth.Options{Secrets: []string{"s1"}}, hand(hs, claims(`,"iat":`+at(time.Second))), ""},
		{"crit", plain, hand(`{"alg":"HS256","crit":["exp"]}`, claims("")), ""},
		{"crit empty", plain, hand(`{"alg":"HS256","crit":[]}`, claims("")), ""},
		{"header alg twice", plain, hand(`{"alg":"none","alg":"HS256"}`, claims("")), ""},
		{"header not UTF-8", plain, hand("{\"alg\":\"HS256\",\"x\":\"\xff\"}", claims("")), ""},
		{"sub twice", plain, hand(hs, `{"sub":"alice","sub":"bob","exp":`+exp+`}`), ""},
		{"sub twice escaped", plain, hand(hs, `{"sub":"alice","s\u0075b":"bob","exp":`+exp+`}`), ""},
		{"exp twice", plain, hand(hs, `{"sub":"u","exp":1,"exp":`+exp+`}`), ""},
		{"sub in another case", plain, hand(hs, `{"sub":"u","SUB":"v","exp":`+exp+`}`), ""},
		{"exp in another case", plain, hand(hs, `{"sub":"u","Exp":1,"exp":`+exp+`}`), ""},
		{"sub invalid UTF-8 ff", plain, hand(hs, "{\"sub\":\"inv\xff\",\"exp\":"+exp+"}"), ""},
		{"sub invalid UTF-8 fe", plain, hand(hs, "{\"sub\":\"inv\xfe\",\"exp\":"+exp+"}"), ""},
		{"sub lone surrogate", plain, hand(hs, `{"sub":"inv\ud800","exp":`+exp+`}`), ""},
		{"sub replacement character", plain, hand(hs, `{"sub":"inv\uFFFD","exp":`+exp+`}`), "inv\uFFFD"},
		{"sub a number", plain, hand(hs, `{"sub":42,"exp":`+exp+`}`), ""},
		{"claims not an object", plain, hand(hs, `["u"]`), ""},
		{"claims with trailing bytes", plain, hand(hs, claims("")+"x"), ""},
		{"issuer, audience and lifetime", strict, hand(hs, withIss("")), "u"},
		{"audience in a list", strict, hand(hs, `{"sub":"u","iss":"https://id.example","aud":["other","keepwatch"],"iat":`+at(0)+`,"exp":`+exp+`}`), "u"},
		{"audience list without ours", strict, hand(hs, `{"sub":"u","iss":"https://id.example","aud":["other"],"iat":`+at(0)+`,"exp":`+exp+`}`), ""},
		{"audience list with a number", strict, hand(hs, `{"sub":"u","iss":"https://id.example","aud":["keepwatch",1],"iat":`+at(0)+`,"exp":`+exp+`}`), ""},
		{"audience missing", strict, hand(hs, `{"sub":"u","iss":"https://id.example","iat":`+at(0)+`,"exp":`+exp+`}`), ""},
		{"audience other", strict, hand(hs, `{"sub":"u","iss":"https://id.example","aud":"keepwatch-admin","iat":`+at(0)+`,"exp":`+exp+`}`), ""},
		{"issuer missing", strict, hand(hs, `{"sub":"u","aud":"keepwatch","iat":`+at(0)+`,"exp":`+exp+`}`), ""},
		{"issuer other", strict, hand(hs, `{"sub":"u","iss":"https://id.example.evil","aud":"keepwatch","iat":`+at(0)+`,"exp":`+exp+`}`), ""},
		{"issuer a number", strict, hand(hs, `{"sub":"u","iss":1,"aud":"keepwatch","iat":`+at(0)+`,"exp":`+exp+`}`), ""},
		{"lifetime without iat", strict, hand(hs, `{"sub":"u","iss":"https://id.example","aud":"keepwatch","exp":`+exp+`}`), ""},
		{"lifetime at the maximum", strict, hand(hs, `{"sub":"u","iss":"https://id.example","aud":"keepwatch","iat":`+at(-time.Hour)+`,"exp":`+exp+`}`), "u"},
		{"lifetime over the maximum", strict, hand(hs, `{"sub":"u","iss":"https://id.example","aud":"keepwatch","iat":`+at(-time.Hour-time.Second)+`,"exp":`+exp+`}`), ""},
		{"iss and aud unchecked when unset", plain, hand(hs, `{"sub":"u","iss":1,"aud":2,"exp":`+exp+`}`), "u"},
	}
	for _, tc := range cases {
		for _, cacheSize := range []int{0, 100} {
			t.Run(fmt.Sprintf("%s/cache %d", tc.name, cacheSize), func(t *testing.T) {
				opts := tc.opts
				opts.CacheSize = cacheSize
				v, err := auth.New(opts)
				if err != nil {
					t.Fatal(err)
				}
				v.SetClock(func() time.Time { return now })
				for range 2 { // the second from the cache when accepted
					u, err := v.Verify([]byte(tc.token))
					if tc.user == "" {
						unauthorized(t, err)
						if u != "" {
							t.Fatalf("refused with user %q", u)
						}
						continue
					}
					if err != nil || u != tc.user {
						t.Fatalf("Verify = %q, %v; want %q", u, err, tc.user)
					}
				}
			})
		}
	}
}

// TestOneSpellingPerToken guards base64url's canonical form: the unused
// low bits of a segment's last character must be zero, so a token (and its
// signature) has one spelling; padding, line breaks and the standard
// alphabet are refused too.
func TestOneSpellingPerToken(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	v, err := auth.New(auth.Options{Secrets: []string{"s1"}, CacheSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	v.SetClock(func() time.Time { return now })
	// A header of 28 bytes and claims of 37 leave unused bits in both.
	header, claims := `{"alg":"HS256", "typ":"JWT"}`, `{"sub":"u","exp":1800003600,"x":"ab"}`
	good := hand(header, claims)
	if u, err := v.Verify([]byte(good)); err != nil || u != "u" {
		t.Fatalf("canonical token: %q, %v", u, err)
	}
	parts := strings.Split(good, ".")
	n := 0
	for i, name := range []string{"header", "claims", "signature"} {
		for bit := 0; ; bit++ {
			other, ok := respell(parts[i], bit)
			if !ok {
				break
			}
			p := slices.Clone(parts)
			p[i] = other
			tok := strings.Join(p, ".")
			if i < 2 { // signed as spelled, as a careless issuer would
				tok = signSegments("s1", p[0], p[1])
			}
			// The lenient decoder reads the same bytes: only the spelling differs.
			a, _ := base64.RawURLEncoding.DecodeString(parts[i])
			b, err := base64.RawURLEncoding.DecodeString(other)
			if err != nil || !bytes.Equal(a, b) {
				t.Fatalf("%s respelled with bit %d decodes to other bytes: the test proves nothing", name, bit)
			}
			n++
			if u, err := v.Verify([]byte(tok)); err == nil {
				t.Errorf("%s spelled %q instead of %q: accepted as %q", name, other, parts[i], u)
			}
		}
	}
	// 28 and 37 bytes leave 4 unused bits each, a 32-byte HMAC 2.
	if n != 4+4+2 {
		t.Fatalf("%d other spellings tried, want 10", n)
	}
	// Spellings a lenient decoder reads as the same bytes, signed as spelled.
	for name, seg := range map[string][2]string{
		"padded header":        {parts[0] + "==", parts[1]},
		"padded claims":        {parts[0], parts[1] + "=="},
		"line break":           {parts[0][:8] + "\n" + parts[0][8:], parts[1]},
		"CR LF":                {parts[0], parts[1][:8] + "\r\n" + parts[1][8:]},
		"standard alphabet":    {parts[0], strings.NewReplacer("-", "+", "_", "/").Replace(b64([]byte(`{"sub":"u","exp":1800003600,"x":">>>?"}`)))},
		"leading space":        {" " + parts[0], parts[1]},
		"empty header segment": {"", parts[1]},
	} {
		tok := signSegments("s1", seg[0], seg[1])
		if _, err := v.Verify([]byte(tok)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	sig := parts[2]
	for name, tok := range map[string]string{
		"padded signature":     good + "=",
		"signature with a tab": parts[0] + "." + parts[1] + "." + sig[:5] + "\t" + sig[5:],
	} {
		if _, err := v.Verify([]byte(tok)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestCachedTokenSkipsNoCheck: a cached token is refused again once its
// time is out (expired, or the clock back before its nbf), and a token
// refused for its issuer or audience is refused every time.
func TestCachedTokenSkipsNoCheck(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	clock := now
	v, err := auth.New(auth.Options{Secrets: []string{"s1"}, CacheSize: 100, Leeway: time.Minute, Issuer: "i"})
	if err != nil {
		t.Fatal(err)
	}
	v.SetClock(func() time.Time { return clock })
	tok := []byte(hand(`{"alg":"HS256"}`, `{"sub":"u","iss":"i","nbf":1800000000,"exp":1800000600}`))
	if u, err := v.Verify(tok); err != nil || u != "u" {
		t.Fatalf("fresh: %q, %v", u, err)
	}
	clock = now.Add(-2 * time.Minute) // before nbf by more than the leeway
	_, err = v.Verify(tok)
	unauthorized(t, err)
	clock = now.Add(10 * time.Minute) // at exp
	_, err = v.Verify(tok)
	unauthorized(t, err)
	clock = now
	other := []byte(hand(`{"alg":"HS256"}`, `{"sub":"u","iss":"j","exp":1800000600}`))
	for range 2 {
		_, err := v.Verify(other)
		unauthorized(t, err)
	}
}

func TestNewChecksOptions(t *testing.T) {
	for _, o := range []auth.Options{
		{Secrets: []string{"s"}, CacheSize: -1},
		{Secrets: []string{"s"}, MaxTTL: -time.Second},
		{Secrets: []string{"s"}, Leeway: -time.Second},
		{Secrets: []string{""}},
	} {
		if _, err := auth.New(o); err == nil {
			t.Errorf("New(%+v) accepted it", o)
		}
	}
}

func TestMintForCarriesIssuerAndAudience(t *testing.T) {
	v, err := auth.New(auth.Options{Secrets: []string{"s1"}, Issuer: "i", Audience: "a", MaxTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := auth.MintFor("s1", "u", time.Hour, "i", "a")
	if err != nil {
		t.Fatal(err)
	}
	if u, err := v.Verify([]byte(tok)); err != nil || u != "u" {
		t.Fatalf("Verify = %q, %v", u, err)
	}
	_, err = v.Verify([]byte(mint(t, "s1", "u", time.Hour)))
	unauthorized(t, err)
}
