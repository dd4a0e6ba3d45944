package command_test

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/keepwatch/keepwatch"
	"github.com/keepwatch/keepwatch/internal/auth"
	"github.com/keepwatch/keepwatch/storage/redisbuf"
)

const unknown = keepwatch.Unknown

func TestPostProgressStoresState(t *testing.T) {
	e := newEnv(t, func(s *setup) { s.cfg.MaxEventAge = time.Hour })
	recv := e.clock.millis()
	hour := time.Hour.Milliseconds()
	cases := []struct {
		name string
		body string
		want keepwatch.State
	}{
		{"every field", `{"video_id":"v","percent":42.5,"position":1234.5,"duration":2700,"ts":1732240000000,"sent_at":1732240000350}`,
			keepwatch.State{EventTime: recv - 350, Percent: 42.5, Position: 1234.5, Duration: 2700, Episode: unknown}},
		{"only the required fields", `{"video_id":"v","percent":0}`,
			keepwatch.State{EventTime: recv, Percent: 0, Position: unknown, Duration: unknown, Episode: unknown}},
		{"null optional fields are unknown", `{"video_id":"v","percent":100,"position":null,"duration":null,"ts":null,"sent_at":null}`,
			keepwatch.State{EventTime: recv, Percent: 100, Position: unknown, Duration: unknown, Episode: unknown}},
		{"numbers rounded to milliseconds", `{"video_id":"v","percent":33.33333,"position":12.0004,"duration":60.0005}`,
			keepwatch.State{EventTime: recv, Percent: 33.333, Position: 12, Duration: 60.001, Episode: unknown}},
		{"position zero is known", `{"video_id":"v","percent":1,"position":0}`,
			keepwatch.State{EventTime: recv, Percent: 1, Position: 0, Duration: unknown, Episode: unknown}},
		{"ts without sent_at has age 0", `{"video_id":"v","percent":5,"ts":1000}`,
			keepwatch.State{EventTime: recv, Percent: 5, Position: unknown, Duration: unknown, Episode: unknown}},
		{"sent_at without ts has age 0", `{"video_id":"v","percent":5,"sent_at":1000}`,
			keepwatch.State{EventTime: recv, Percent: 5, Position: unknown, Duration: unknown, Episode: unknown}},
		{"ts after sent_at is clamped to age 0", `{"video_id":"v","percent":5,"ts":5000,"sent_at":1000}`,
			keepwatch.State{EventTime: recv, Percent: 5, Position: unknown, Duration: unknown, Episode: unknown}},
		{"age is the device's sent_at minus ts", `{"video_id":"v","percent":5,"ts":1000,"sent_at":61000}`,
			keepwatch.State{EventTime: recv - 60000, Percent: 5, Position: unknown, Duration: unknown, Episode: unknown}},
		{"age at the maximum", `{"video_id":"v","percent":5,"ts":1000,"sent_at":` + strconv.FormatInt(1000+hour, 10) + `}`,
			keepwatch.State{EventTime: recv - hour, Percent: 5, Position: unknown, Duration: unknown, Episode: unknown}},
		{"age over the maximum is clamped", `{"video_id":"v","percent":5,"ts":1000,"sent_at":` + strconv.FormatInt(1000+50*hour, 10) + `}`,
			keepwatch.State{EventTime: recv - hour, Percent: 5, Position: unknown, Duration: unknown, Episode: unknown}},
		{"unknown fields are ignored", `{"video_id":"v","percent":7,"user_id":"someone-else","extra":[1,2]}`,
			keepwatch.State{EventTime: recv, Percent: 7, Position: unknown, Duration: unknown, Episode: unknown}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			user := e.user("u")
			if n := e.post(user, "/v1/progress", tc.body).accepted(t); n != 1 {
				t.Fatalf("accepted %d, want 1", n)
			}
			got := e.pending(user)
			if len(got) != 1 || got["v"] != tc.want {
				t.Fatalf("stored %+v, want v: %+v", got, tc.want)
			}
		})
	}
	t.Run("user is the token's subject, never the body's", func(t *testing.T) {
		user, other := e.user("u"), e.user("other")
		e.post(user, "/v1/progress", `{"video_id":"v","percent":1,"user_id":"`+other+`"}`).accepted(t)
		if len(e.pending(other)) != 0 || len(e.pending(user)) != 1 {
			t.Fatalf("stored under the wrong user")
		}
	})
	t.Run("content type with parameters", func(t *testing.T) {
		user := e.user("u")
		e.do(req{path: "/v1/progress", body: `{"video_id":"v","percent":1}`, ctype: "Application/JSON; charset=utf-8",
			auth: "Bearer " + token(t, user)}).accepted(t)
	})
}

// nothingStored runs f and fails if the buffer gained or changed an entry.
func nothingStored(t *testing.T, e *env, user string, f func()) {
	t.Helper()
	before, mine := e.total(), e.pending(user)
	f()
	if after := e.total(); after != before {
		t.Errorf("pending entries went from %d to %d", before, after)
	}
	if got := e.pending(user); !mapsEqual(got, mine) {
		t.Errorf("the user's entries changed from %v to %v", mine, got)
	}
}

func mapsEqual(a, b map[string]keepwatch.State) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// handToken builds a token from a raw header and claims, signed with
// HMAC-SHA256 under secret ("" leaves the signature empty).
func handToken(header, claims, secret string) string {
	in := b64(header) + "." + b64(claims)
	if secret == "" {
		return in + "."
	}
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(in))
	return in + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func signed(t *testing.T, method jwt.SigningMethod, secret string, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(method, claims).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestAuth(t *testing.T) {
	e := newEnv(t)
	const body = `{"video_id":"v","percent":50}`
	exp := time.Now().Add(time.Hour).Unix()
	claims := func(user string) string { return `{"sub":"` + user + `","exp":` + strconv.FormatInt(exp, 10) + `}` }

	rejected := []struct {
		name string
		auth func(user string) string // the Authorization header for user
	}{
		{"no header", func(string) string { return "" }},
		{"basic scheme", func(string) string { return "Basic dXNlcjpwYXNz" }},
		{"token without scheme", func(u string) string { return token(t, u) }},
		{"other scheme", func(u string) string { return "Token " + token(t, u) }},
		{"bearer without token", func(string) string { return "Bearer " }},
		{"bearer word only", func(string) string { return "Bearer" }},
		{"not a jwt", func(string) string { return "Bearer not-a-jwt" }},
		{"three garbage parts", func(string) string { return "Bearer a.b.c" }},
		{"truncated signature", func(u string) string { tok := token(t, u); return "Bearer " + tok[:len(tok)-4] }},
		{"forged claims under a real signature", func(u string) string {
			real := strings.Split(token(t, "someone-else"), ".")
			return "Bearer " + real[0] + "." + b64(claims(u)) + "." + real[2]
		}},
		{"wrong secret", func(u string) string {
			tok, err := auth.Mint("not-the-secret", u, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			return "Bearer " + tok
		}},
		{"expired", func(u string) string {
			tok, err := auth.Mint(secretNew, u, -time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			return "Bearer " + tok
		}},
		{"alg none", func(u string) string { return "Bearer " + handToken(`{"alg":"none","typ":"JWT"}`, claims(u), "") }},
		{"alg none signed anyway", func(u string) string {
			return "Bearer " + handToken(`{"alg":"none","typ":"JWT"}`, claims(u), secretNew)
		}},
		{"alg HS256 with an empty signature", func(u string) string {
			return "Bearer " + handToken(`{"alg":"HS256","typ":"JWT"}`, claims(u), "")
		}},
		{"RS256 header over an HMAC of the secret", func(u string) string {
			return "Bearer " + handToken(`{"alg":"RS256","typ":"JWT"}`, claims(u), secretNew)
		}},
		{"HS512 with the right secret", func(u string) string {
			return "Bearer " + signed(t, jwt.SigningMethodHS512, secretNew, jwt.MapClaims{"sub": u, "exp": exp})
		}},
		{"HS384 with the right secret", func(u string) string {
			return "Bearer " + signed(t, jwt.SigningMethodHS384, secretNew, jwt.MapClaims{"sub": u, "exp": exp})
		}},
		{"no sub", func(string) string {
			return "Bearer " + signed(t, jwt.SigningMethodHS256, secretNew, jwt.MapClaims{"exp": exp})
		}},
		{"empty sub", func(string) string {
			return "Bearer " + signed(t, jwt.SigningMethodHS256, secretNew, jwt.MapClaims{"sub": "", "exp": exp})
		}},
		{"sub with a control character", func(u string) string {
			return "Bearer " + signed(t, jwt.SigningMethodHS256, secretNew, jwt.MapClaims{"sub": u + "\n", "exp": exp})
		}},
		{"no exp", func(u string) string {
			return "Bearer " + signed(t, jwt.SigningMethodHS256, secretNew, jwt.MapClaims{"sub": u})
		}},
		{"not valid yet", func(u string) string {
			return "Bearer " + signed(t, jwt.SigningMethodHS256, secretNew,
				jwt.MapClaims{"sub": u, "exp": exp, "nbf": time.Now().Add(30 * time.Minute).Unix()})
		}},
	}
	for _, tc := range rejected {
		t.Run(tc.name, func(t *testing.T) {
			user := e.user("u")
			h := tc.auth(user)
			for _, path := range []string{"/v1/progress", "/v1/progress/batch"} {
				b := body
				if strings.HasSuffix(path, "batch") {
					b = `{"events":[` + body + `]}`
				}
				nothingStored(t, e, user, func() {
					r := e.do(req{path: path, body: b, auth: h})
					if p := r.problem(t, http.StatusUnauthorized); p.Type != "urn:keepwatch:problem:unauthorized" {
						t.Errorf("type %q", p.Type)
					}
					// RFC 6750 3: the scheme always, the error only to a
					// request that sent a bearer token.
					want := "Bearer"
					if strings.HasPrefix(strings.ToLower(h), "bearer ") && len(h) > len("bearer ") {
						want = `Bearer error="invalid_token"`
					}
					if got := r.header.Get("WWW-Authenticate"); got != want {
						t.Errorf("WWW-Authenticate %q, want %q", got, want)
					}
				})
			}
			nothingStored(t, e, user, func() {
				e.do(req{method: http.MethodDelete, path: "/v1/progress/v", auth: h}).problem(t, http.StatusUnauthorized)
			})
		})
	}

	accepted := []struct {
		name, secret string
	}{
		{"signed with the current secret", secretNew},
		{"signed with the rotated-out secret", secretOld},
	}
	for _, tc := range accepted {
		t.Run(tc.name, func(t *testing.T) {
			user := e.user("u")
			tok, err := auth.Mint(tc.secret, user, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			for range 2 { // the second request is answered from the token cache
				e.do(req{path: "/v1/progress", body: body, auth: "Bearer " + tok}).accepted(t)
			}
			e.do(req{path: "/v1/progress", body: body, auth: "bearer " + tok}).accepted(t)
			if got := e.pending(user); got["v"].Percent != 50 {
				t.Fatalf("stored %v", got)
			}
		})
	}
}

func TestMalformedBody(t *testing.T) {
	e := newEnv(t)
	bodies := map[string]string{
		"empty":              "",
		"not json":           "video_id=v&percent=1",
		"truncated":          `{"video_id":"v","percent":1`,
		"trailing garbage":   `{"video_id":"v","percent":1}x`,
		"array":              `[{"video_id":"v","percent":1}]`,
		"string":             `"hello"`,
		"number":             `42`,
		"null":               `null`,
		"bare word":          `Infinity`,
		"single quotes":      `{'video_id':'v','percent':1}`,
		"unquoted key":       `{video_id:"v",percent:1}`,
		"two objects":        `{"video_id":"v","percent":1}{"video_id":"w","percent":1}`,
		"trailing comma":     `{"video_id":"v","percent":1,}`,
		"unterminated array": `{"video_id":"v","percent":[1}`,
	}
	for name, body := range bodies {
		t.Run(name, func(t *testing.T) {
			for _, path := range []string{"/v1/progress", "/v1/progress/batch"} {
				user := e.user("u")
				nothingStored(t, e, user, func() {
					p := e.post(user, path, body).problem(t, http.StatusBadRequest)
					if p.Type != "urn:keepwatch:problem:malformed" {
						t.Errorf("%s: type %q", path, p.Type)
					}
				})
			}
		})
	}
}

func TestBodyLimit(t *testing.T) {
	const limit = 256
	e := newEnv(t, func(s *setup) { s.edge.BodyLimit = limit })
	e.listen()
	pad := func(n int) string {
		b := `{"video_id":"v","percent":1,"pad":"`
		return b + strings.Repeat("x", n-len(b)-2) + `"}`
	}
	t.Run("at the limit is accepted", func(t *testing.T) {
		user := e.user("u")
		e.post(user, "/v1/progress", pad(limit)).accepted(t)
	})
	for _, path := range []string{"/v1/progress", "/v1/progress/batch"} {
		t.Run("one byte over the limit "+path, func(t *testing.T) {
			user := e.user("u")
			nothingStored(t, e, user, func() {
				e.post(user, path, pad(limit+1)).problem(t, http.StatusRequestEntityTooLarge)
			})
		})
		// Only the headers and a little of the body are sent: the size is
		// checked before the body is read, so the answer comes anyway. (A
		// client writing a large body the server will not read can see the
		// connection reset before it reads the 413.)
		t.Run("announced far over the limit "+path, func(t *testing.T) {
			user := e.user("u")
			nothingStored(t, e, user, func() {
				conn, err := net.Dial("tcp", strings.TrimPrefix(e.base, "http://"))
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				_, err = fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"+
					"Authorization: Bearer %s\r\nContent-Length: 100000000\r\n\r\n{\"video_id\":", path, token(t, user))
				if err != nil {
					t.Fatal(err)
				}
				res, err := http.ReadResponse(bufio.NewReader(conn), nil)
				if err != nil {
					t.Fatal(err)
				}
				defer res.Body.Close()
				b, _ := io.ReadAll(res.Body)
				resp{status: res.StatusCode, header: res.Header, body: b}.problem(t, http.StatusRequestEntityTooLarge)
			})
		})
	}
}

func TestContentType(t *testing.T) {
	e := newEnv(t)
	const body = `{"video_id":"v","percent":1}`
	for _, ct := range []string{"-", "text/plain", "application/x-www-form-urlencoded", "application/xml",
		"application/jsonx", "application/problem+json", "text/json"} {
		for _, path := range []string{"/v1/progress", "/v1/progress/batch"} {
			t.Run(ct+" "+path, func(t *testing.T) {
				user := e.user("u")
				b := body
				if strings.HasSuffix(path, "batch") {
					b = `{"events":[` + body + `]}`
				}
				nothingStored(t, e, user, func() {
					e.do(req{path: path, body: b, ctype: ct, auth: "Bearer " + token(t, user)}).
						problem(t, http.StatusUnsupportedMediaType)
				})
			})
		}
	}
}

// invalidFields are bodies of one event with the fields they break, in the
// order the problem lists them.
var invalidFields = []struct {
	name   string
	event  string
	fields []string
}{
	{"video_id missing", `{"percent":1}`, []string{"video_id"}},
	{"video_id empty", `{"video_id":"","percent":1}`, []string{"video_id"}},
	{"video_id too long", `{"video_id":"` + strings.Repeat("a", 129) + `","percent":1}`, []string{"video_id"}},
	{"video_id with a slash", `{"video_id":"a/b","percent":1}`, []string{"video_id"}},
	{"video_id with a space", `{"video_id":"a b","percent":1}`, []string{"video_id"}},
	{"video_id not ascii", `{"video_id":"vidé","percent":1}`, []string{"video_id"}},
	{"video_id with an escaped newline", `{"video_id":"a\nb","percent":1}`, []string{"video_id"}},
	{"video_id a number", `{"video_id":42,"percent":1}`, []string{"video_id"}},
	{"video_id null", `{"video_id":null,"percent":1}`, []string{"video_id"}},
	{"video_id an object", `{"video_id":{"id":"v"},"percent":1}`, []string{"video_id"}},
	{"percent missing", `{"video_id":"v"}`, []string{"percent"}},
	{"percent negative", `{"video_id":"v","percent":-0.001}`, []string{"percent"}},
	{"percent over 100", `{"video_id":"v","percent":100.001}`, []string{"percent"}},
	{"percent a string", `{"video_id":"v","percent":"50"}`, []string{"percent"}},
	{"percent null", `{"video_id":"v","percent":null}`, []string{"percent"}},
	{"percent a bool", `{"video_id":"v","percent":true}`, []string{"percent"}},
	{"percent overflowing to infinity", `{"video_id":"v","percent":1e999}`, []string{"percent"}},
	{"percent -0 overflowing", `{"video_id":"v","percent":-1e999}`, []string{"percent"}},
	{"percent the string NaN", `{"video_id":"v","percent":"NaN"}`, []string{"percent"}},
	{"position overflowing to infinity", `{"video_id":"v","percent":1,"position":1e400}`, []string{"position"}},
	{"duration overflowing to infinity", `{"video_id":"v","percent":1,"duration":1e400}`, []string{"duration"}},
	{"position negative", `{"video_id":"v","percent":1,"position":-1}`, []string{"position"}},
	{"position a string", `{"video_id":"v","percent":1,"position":"10"}`, []string{"position"}},
	{"position over the maximum", `{"video_id":"v","percent":1,"position":1e9}`, []string{"position"}},
	{"duration zero", `{"video_id":"v","percent":1,"duration":0}`, []string{"duration"}},
	{"duration negative", `{"video_id":"v","percent":1,"duration":-5}`, []string{"duration"}},
	{"duration a string", `{"video_id":"v","percent":1,"duration":"60"}`, []string{"duration"}},
	{"ts negative", `{"video_id":"v","percent":1,"ts":-1}`, []string{"ts"}},
	{"ts fractional", `{"video_id":"v","percent":1,"ts":1732240000000.5}`, []string{"ts"}},
	{"ts a string", `{"video_id":"v","percent":1,"ts":"1732240000000"}`, []string{"ts"}},
	{"ts past year 2286", `{"video_id":"v","percent":1,"ts":1e16}`, []string{"ts"}},
	{"every field at once", `{"video_id":"","percent":101,"position":-1,"duration":0,"ts":-1,"sent_at":"x"}`,
		[]string{"video_id", "percent", "position", "duration", "ts", "sent_at"}},
}

func TestInvalidFields(t *testing.T) {
	e := newEnv(t)
	cases := slices.Clone(invalidFields)
	cases = append(cases, []struct {
		name   string
		event  string
		fields []string
	}{
		{"sent_at negative", `{"video_id":"v","percent":1,"sent_at":-1}`, []string{"sent_at"}},
		{"sent_at fractional", `{"video_id":"v","percent":1,"sent_at":0.5}`, []string{"sent_at"}},
		{"sent_at a string", `{"video_id":"v","percent":1,"sent_at":"now"}`, []string{"sent_at"}},
	}...)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			user := e.user("u")
			nothingStored(t, e, user, func() {
				p := e.post(user, "/v1/progress", tc.event).problem(t, http.StatusUnprocessableEntity)
				if !slices.Equal(p.fields(), tc.fields) {
					t.Errorf("fields %q, want %q", p.fields(), tc.fields)
				}
				for _, f := range p.Errors {
					if f.Detail == "" {
						t.Errorf("field %s has no detail", f.Field)
					}
				}
			})
		})
	}
}

// TestNonJSONNumbersAreRejected covers the NaN and infinity literals the
// parser tolerates although JSON has none: 400 (not JSON) or 422 (not a
// number) are both refusals; what matters is that nothing is stored.
func TestNonJSONNumbersAreRejected(t *testing.T) {
	e := newEnv(t)
	for _, body := range []string{
		`{"video_id":"v","percent":NaN}`, `{"video_id":"v","percent":nan}`, `{"video_id":"v","percent":-Inf}`,
		`{"video_id":"v","percent":inf}`, `{"video_id":"v","percent":1,"position":NaN}`,
		`{"video_id":"v","percent":1,"duration":Inf}`, `{"video_id":"v","percent":1,"ts":NaN}`,
		`{"video_id":"v","percent":1,"ts":1,"sent_at":inf}`,
	} {
		t.Run(body, func(t *testing.T) {
			user := e.user("u")
			nothingStored(t, e, user, func() {
				r := e.post(user, "/v1/progress", body)
				if r.status != http.StatusBadRequest && r.status != http.StatusUnprocessableEntity {
					t.Fatalf("status %d, want 400 or 422; body %s", r.status, r.body)
				}
				r.problem(t, r.status)
			})
		})
	}
}

func TestDeleteProgress(t *testing.T) {
	e := newEnv(t)
	t.Run("stores a tombstone at the receive time", func(t *testing.T) {
		user := e.user("u")
		e.post(user, "/v1/progress", `{"video_id":"v","percent":30}`).accepted(t)
		e.clock.add(time.Second)
		h := "Bearer " + token(t, user)
		if n := e.do(req{method: http.MethodDelete, path: "/v1/progress/v", auth: h}).accepted(t); n != 1 {
			t.Fatalf("accepted %d", n)
		}
		got := e.pending(user)["v"]
		want := keepwatch.State{EventTime: e.clock.millis(), Kind: keepwatch.KindDeleted, Position: unknown, Duration: unknown, Episode: unknown}
		if got != want {
			t.Fatalf("stored %+v, want %+v", got, want)
		}
	})
	t.Run("the video id is percent-decoded", func(t *testing.T) {
		// What encodeURIComponent("ep:1") sends.
		user := e.user("u")
		e.post(user, "/v1/progress", `{"video_id":"ep:1","percent":30}`).accepted(t)
		e.clock.add(time.Second)
		e.do(req{method: http.MethodDelete, path: "/v1/progress/ep%3A1", auth: "Bearer " + token(t, user)}).accepted(t)
		if got := e.pending(user); len(got) != 1 || got["ep:1"].Kind != keepwatch.KindDeleted {
			t.Fatalf("stored %+v, want ep:1 removed", got)
		}
	})
	invalid := []struct {
		path   string
		fields []string
	}{
		{"/v1/progress/a%20b", []string{"video_id"}},
		{"/v1/progress/a%2Fb", []string{"video_id"}},
		{"/v1/progress/" + strings.Repeat("a", 129), []string{"video_id"}},
		{"/v1/progress/v?ts=abc", []string{"ts"}},
		{"/v1/progress/v?ts=1.5&sent_at=-2", []string{"ts", "sent_at"}},
		{"/v1/progress/v?sent_at=99999999999999", []string{"sent_at"}},
	}
	for _, tc := range invalid {
		t.Run("422 "+tc.path, func(t *testing.T) {
			user := e.user("u")
			nothingStored(t, e, user, func() {
				p := e.do(req{method: http.MethodDelete, path: tc.path, auth: "Bearer " + token(t, user)}).
					problem(t, http.StatusUnprocessableEntity)
				if !slices.Equal(p.fields(), tc.fields) {
					t.Errorf("fields %q, want %q", p.fields(), tc.fields)
				}
			})
		})
	}
}

// TestDeleteHidesOlderProgressNotNewer guards the tombstone order: a removal
// made offline lands at its own event time.
func TestDeleteHidesOlderProgressNotNewer(t *testing.T) {
	e := newEnv(t)
	user := e.user("u")
	h := "Bearer " + token(t, user)
	del := func(query string) {
		t.Helper()
		e.do(req{method: http.MethodDelete, path: "/v1/progress/v" + query, auth: h}).accepted(t)
	}

	e.post(user, "/v1/progress", `{"video_id":"v","percent":10}`).accepted(t)
	progressAt := e.clock.millis()

	// Made offline a minute before the progress above, synced 10 s after it.
	e.clock.add(10 * time.Second)
	del("?ts=1000000&sent_at=1070000") // age 70 s: 60 s before the progress
	if got := e.pending(user)["v"]; got.Deleted() || got.EventTime != progressAt || got.Percent != 10 {
		t.Fatalf("an older removal hid newer progress: %+v", got)
	}

	// A removal now hides the progress.
	e.clock.add(10 * time.Second)
	del("")
	if got := e.pending(user)["v"]; !got.Deleted() || got.EventTime != e.clock.millis() {
		t.Fatalf("a newer removal did not hide the progress: %+v", got)
	}

	// Progress watched before the removal (a late retry) stays hidden.
	e.clock.add(10 * time.Second)
	e.post(user, "/v1/progress", `{"video_id":"v","percent":20,"ts":1000,"sent_at":21000}`).accepted(t)
	if got := e.pending(user)["v"]; !got.Deleted() {
		t.Fatalf("older progress showed through the removal: %+v", got)
	}

	// Progress after the removal is shown again.
	e.clock.add(10 * time.Second)
	e.post(user, "/v1/progress", `{"video_id":"v","percent":30}`).accepted(t)
	if got := e.pending(user)["v"]; got.Deleted() || got.Percent != 30 {
		t.Fatalf("newer progress stayed hidden: %+v", got)
	}
}

// TestEraseHidesOlderProgressNotNewer guards the erase's order in the
// buffer: DELETE /v1/progress drops the user's pending progress up to its
// event time, refuses what comes later from before it (a late retry, an
// offline batch), keeps what comes after it, and leaves other users alone.
func TestEraseHidesOlderProgressNotNewer(t *testing.T) {
	e := newEnv(t)
	user, other := e.user("u"), e.user("o")
	h := "Bearer " + token(t, user)
	e.post(user, "/v1/progress", `{"video_id":"a","percent":10,"series_id":"s","episode":1}`).accepted(t)
	e.post(user, "/v1/progress", `{"video_id":"b","percent":10}`).accepted(t)
	e.post(other, "/v1/progress", `{"video_id":"a","percent":10}`).accepted(t)
	e.clock.add(time.Second)
	e.post(user, "/v1/progress", `{"video_id":"c","percent":10}`).accepted(t)
	cAt := e.clock.millis()
	// Made offline half a second before c, synced now.
	if n := e.do(req{method: http.MethodDelete, path: "/v1/progress?ts=1000000&sent_at=1000500", auth: h}).accepted(t); n != 1 {
		t.Fatalf("accepted %d", n)
	}
	erasedAt := cAt - 500
	want := map[string]keepwatch.State{"c": e.pending(user)["c"], "": keepwatch.EraseState(erasedAt)}
	if got := e.pending(user); !mapsEqual(got, want) {
		t.Fatalf("pending %+v, want %+v", got, want)
	}
	if got := e.pending(other); len(got) != 1 {
		t.Fatalf("another user's entries: %+v", got)
	}
	// Late retries of progress from before the erase: one post, a batch.
	e.clock.add(10 * time.Second)
	e.post(user, "/v1/progress", `{"video_id":"a","percent":20,"ts":1000,"sent_at":12000}`).accepted(t)
	e.post(user, "/v1/progress/batch", `{"sent_at":20000,"events":[{"video_id":"b","percent":30,"ts":1000},{"video_id":"d","percent":5,"ts":19999}]}`).accepted(t)
	want["d"] = keepwatch.State{EventTime: e.clock.millis() - 1, Percent: 5, Position: unknown, Duration: unknown, Episode: unknown}
	if got := e.pending(user); !mapsEqual(got, want) {
		t.Fatalf("after late retries, pending %+v, want %+v", got, want)
	}
	// A later erase covers everything up to it, the erase before included.
	e.clock.add(time.Second)
	e.do(req{method: http.MethodDelete, path: "/v1/progress", auth: h}).accepted(t)
	if got := e.pending(user); !mapsEqual(got, map[string]keepwatch.State{"": keepwatch.EraseState(e.clock.millis())}) {
		t.Fatalf("after a second erase, pending %+v", got)
	}
	for _, bad := range []string{"/v1/progress?ts=x", "/v1/progress?sent_at=-1"} {
		p := e.do(req{method: http.MethodDelete, path: bad, auth: h}).problem(t, http.StatusUnprocessableEntity)
		if len(p.fields()) != 1 {
			t.Fatalf("%s: %+v", bad, p)
		}
	}
	e.do(req{method: http.MethodDelete, path: "/v1/progress"}).problem(t, http.StatusUnauthorized)
}

// TestDeviceClockHoursOffKeepsFreshProgress guards event time: it comes from
// the server's clock and the age the device measured, never the device clock.
func TestDeviceClockHoursOffKeepsFreshProgress(t *testing.T) {
	for _, skew := range []time.Duration{-5 * time.Hour, 3 * time.Hour, -30 * 24 * time.Hour} {
		t.Run(skew.String(), func(t *testing.T) {
			e := newEnv(t)
			user := e.user("u")
			// A device with a right clock posts first.
			real := e.clock.millis()
			e.post(user, "/v1/progress", `{"video_id":"v","percent":10,"ts":`+ms(real-200)+`,"sent_at":`+ms(real)+`}`).accepted(t)
			first := e.pending(user)["v"]

			// Ten seconds later a device whose clock is off by skew posts the
			// next position, observed 300 ms before it was sent.
			e.clock.add(10 * time.Second)
			dev := e.clock.millis() + skew.Milliseconds()
			e.post(user, "/v1/progress", `{"video_id":"v","percent":20,"ts":`+ms(dev-300)+`,"sent_at":`+ms(dev)+`}`).accepted(t)
			got := e.pending(user)["v"]
			if got.Percent != 20 || got.EventTime != e.clock.millis()-300 || !got.Newer(first) {
				t.Fatalf("fresh progress from a device %v off: stored %+v (first %+v)", skew, got, first)
			}
		})
	}
}

// TestLateRetryDoesNotOverwriteNewer guards the retry rule: a retried request
// keeps its ts and gets a new sent_at, so it lands at its true, older time.
func TestLateRetryDoesNotOverwriteNewer(t *testing.T) {
	e := newEnv(t)
	user := e.user("u")
	dev := int64(1_732_240_000_000) // the device's clock, unrelated to the server's
	e.post(user, "/v1/progress", `{"video_id":"v","percent":10,"ts":`+ms(dev)+`,"sent_at":`+ms(dev+50)+`}`).accepted(t)

	e.clock.add(10 * time.Second)
	e.post(user, "/v1/progress", `{"video_id":"v","percent":20,"ts":`+ms(dev+10_000)+`,"sent_at":`+ms(dev+10_050)+`}`).accepted(t)
	newer := e.pending(user)["v"]

	// The first request's retry arrives 5 s after the newer event.
	e.clock.add(5 * time.Second)
	e.post(user, "/v1/progress", `{"video_id":"v","percent":10,"ts":`+ms(dev)+`,"sent_at":`+ms(dev+15_000)+`}`).accepted(t)
	if got := e.pending(user)["v"]; got != newer || got.Percent != 20 {
		t.Fatalf("a late retry replaced %+v with %+v", newer, got)
	}

	// The same through the batch endpoint.
	e.clock.add(time.Second)
	e.post(user, "/v1/progress/batch", `{"sent_at":`+ms(dev+16_000)+`,"events":[{"video_id":"v","percent":10,"ts":`+ms(dev)+`}]}`).accepted(t)
	if got := e.pending(user)["v"]; got != newer {
		t.Fatalf("a late batch retry replaced %+v with %+v", newer, got)
	}
}

func ms(n int64) string { return strconv.FormatInt(n, 10) }

type batchAnswer struct {
	Accepted int `json:"accepted"`
	Rejected []struct {
		Index  int                    `json:"index"`
		Errors []keepwatch.FieldError `json:"errors"`
	} `json:"rejected"`
}

func TestBatch(t *testing.T) {
	e := newEnv(t, func(s *setup) { s.cfg.BatchMaxEvents = 5 })
	recv := e.clock.millis()

	t.Run("every event valid", func(t *testing.T) {
		user := e.user("u")
		r := e.post(user, "/v1/progress/batch", `{"sent_at":100000,"events":[
			{"video_id":"a","percent":10,"ts":40000},
			{"video_id":"b","percent":20,"position":5,"duration":50},
			{"video_id":"c","percent":30,"ts":200000}]}`)
		var a batchAnswer
		if r.status != http.StatusAccepted || json.Unmarshal(r.body, &a) != nil || a.Accepted != 3 || a.Rejected == nil || len(a.Rejected) != 0 {
			t.Fatalf("answer %d %s", r.status, r.body)
		}
		want := map[string]keepwatch.State{
			"a": {EventTime: recv - 60000, Percent: 10, Position: unknown, Duration: unknown, Episode: unknown},
			"b": {EventTime: recv, Percent: 20, Position: 5, Duration: 50, Episode: unknown},
			"c": {EventTime: recv, Percent: 30, Position: unknown, Duration: unknown, Episode: unknown}, // ts after sent_at: age 0
		}
		if got := e.pending(user); !mapsEqual(got, want) {
			t.Fatalf("stored %v, want %v", got, want)
		}
	})
	t.Run("newest of one video in a batch wins", func(t *testing.T) {
		user := e.user("u")
		e.post(user, "/v1/progress/batch", `{"sent_at":100000,"events":[
			{"video_id":"a","percent":30,"ts":90000},
			{"video_id":"a","percent":10,"ts":10000},
			{"video_id":"a","percent":20,"ts":50000}]}`).accepted(t)
		if got := e.pending(user)["a"]; got.Percent != 30 || got.EventTime != recv-10000 {
			t.Fatalf("stored %+v", got)
		}
	})
	t.Run("partial", func(t *testing.T) {
		user := e.user("u")
		r := e.post(user, "/v1/progress/batch", `{"events":[
			{"video_id":"a","percent":10},
			{"video_id":"b","percent":200},
			{"video_id":"c","percent":30},
			42,
			{"video_id":"e/","percent":-1,"ts":"x"}]}`)
		var a batchAnswer
		if r.status != http.StatusAccepted || json.Unmarshal(r.body, &a) != nil {
			t.Fatalf("answer %d %s", r.status, r.body)
		}
		if a.Accepted != 2 || len(a.Rejected) != 3 {
			t.Fatalf("answer %s", r.body)
		}
		wantIdx := []int{1, 3, 4}
		for i, rj := range a.Rejected {
			if rj.Index != wantIdx[i] || len(rj.Errors) == 0 {
				t.Fatalf("rejection %d: %+v, want index %d with reasons", i, rj, wantIdx[i])
			}
		}
		if f := fieldNames(a.Rejected[0].Errors); !slices.Equal(f, []string{"percent"}) {
			t.Errorf("index 1 fields %q", f)
		}
		if f := fieldNames(a.Rejected[2].Errors); !slices.Equal(f, []string{"video_id", "percent", "ts"}) {
			t.Errorf("index 4 fields %q", f)
		}
		got := e.pending(user)
		if len(got) != 2 || got["a"].Percent != 10 || got["c"].Percent != 30 {
			t.Fatalf("stored %v, want a and c only", got)
		}
	})

	invalid := []struct {
		name   string
		body   string
		fields []string
	}{
		{"none valid", `{"events":[{"video_id":"a","percent":101},{"percent":1}]}`,
			[]string{"events[0].percent", "events[1].video_id"}},
		{"one invalid event", `{"events":[{"video_id":"a","percent":1,"duration":0}]}`, []string{"events[0].duration"}},
		{"empty", `{"events":[]}`, []string{"events"}},
		{"over the maximum", `{"events":[` + strings.TrimSuffix(strings.Repeat(`{"video_id":"a","percent":1},`, 6), ",") + `]}`,
			[]string{"events"}},
		{"events missing", `{"sent_at":1}`, []string{"events"}},
		{"events null", `{"events":null}`, []string{"events"}},
		{"events an object", `{"events":{"video_id":"a","percent":1}}`, []string{"events"}},
		{"sent_at invalid", `{"sent_at":"now","events":[{"video_id":"a","percent":1}]}`, []string{"sent_at"}},
		{"sent_at fractional", `{"sent_at":1.5,"events":[{"video_id":"a","percent":1}]}`, []string{"sent_at"}},
	}
	for _, tc := range invalid {
		t.Run(tc.name, func(t *testing.T) {
			user := e.user("u")
			nothingStored(t, e, user, func() {
				p := e.post(user, "/v1/progress/batch", tc.body).problem(t, http.StatusUnprocessableEntity)
				if !slices.Equal(p.fields(), tc.fields) {
					t.Errorf("fields %q, want %q", p.fields(), tc.fields)
				}
			})
		})
	}
	t.Run("every invalid single event is rejected in a batch", func(t *testing.T) {
		for _, tc := range invalidFields {
			user := e.user("u")
			nothingStored(t, e, user, func() {
				p := e.post(user, "/v1/progress/batch", `{"events":[`+tc.event+`]}`).problem(t, http.StatusUnprocessableEntity)
				want := make([]string, len(tc.fields))
				for i, f := range tc.fields {
					want[i] = "events[0]." + f
				}
				if tc.name == "every field at once" { // sent_at belongs to the envelope in a batch
					want = want[:len(want)-1]
				}
				if !slices.Equal(p.fields(), want) {
					t.Errorf("%s: fields %q, want %q", tc.name, p.fields(), want)
				}
			})
		}
	})
	t.Run("at the maximum", func(t *testing.T) {
		user := e.user("u")
		var evs []string
		for i := range 5 {
			evs = append(evs, `{"video_id":"v`+strconv.Itoa(i)+`","percent":1}`)
		}
		if n := e.post(user, "/v1/progress/batch", `{"events":[`+strings.Join(evs, ",")+`]}`).accepted(t); n != 5 {
			t.Fatalf("accepted %d", n)
		}
		if got := e.pending(user); len(got) != 5 {
			t.Fatalf("stored %d entries", len(got))
		}
	})
}

// TestBatchNonObjectEventField guards the field name of an event that is not
// an object when no event of the batch is valid: it must name the event once
// ("events[0]"), not twice ("events[0].events[0]").
func TestBatchNonObjectEventField(t *testing.T) {
	e := newEnv(t)
	user := e.user("u")
	p := e.post(user, "/v1/progress/batch", `{"events":[42,{"percent":1}]}`).problem(t, http.StatusUnprocessableEntity)
	if want := []string{"events[0]", "events[1].video_id"}; !slices.Equal(p.fields(), want) {
		t.Fatalf("fields %q, want %q", p.fields(), want)
	}
}

func fieldNames(fs []keepwatch.FieldError) []string {
	out := make([]string, len(fs))
	for i, f := range fs {
		out[i] = f.Field
	}
	return out
}

func TestRateLimit(t *testing.T) {
	e := newEnv(t, func(s *setup) { s.edge.Rate.Limit, s.edge.Rate.Burst = 1, 3 })
	busy, calm := e.user("busy"), e.user("calm")
	for i := range 3 {
		e.post(busy, "/v1/progress", `{"video_id":"v","percent":`+strconv.Itoa(i+1)+`}`).accepted(t)
	}
	nothingStored(t, e, busy, func() {
		for _, path := range []string{"/v1/progress", "/v1/progress/batch"} {
			body := `{"video_id":"limited","percent":50}`
			if strings.HasSuffix(path, "batch") {
				body = `{"events":[` + body + `]}`
			}
			r := e.post(busy, path, body)
			r.problem(t, http.StatusTooManyRequests)
			if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra < 1 {
				t.Errorf("Retry-After %q", r.header.Get("Retry-After"))
			}
		}
		e.do(req{method: http.MethodDelete, path: "/v1/progress/v", auth: "Bearer " + token(t, busy)}).
			problem(t, http.StatusTooManyRequests)
	})
	if got := e.pending(busy); len(got) != 1 || got["v"].Percent != 3 {
		t.Fatalf("stored %v", got)
	}
	// Another token of the same user (a second device, or a renewed token)
	// draws on the same budget.
	other, err := auth.Mint(secretNew, busy, 2*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if other == token(t, busy) {
		t.Fatal("the second token is the first one: the check below proves nothing")
	}
	e.do(req{method: http.MethodPost, path: "/v1/progress", auth: "Bearer " + other, body: `{"video_id":"other","percent":1}`}).
		problem(t, http.StatusTooManyRequests)
	// Another user is not affected.
	e.post(calm, "/v1/progress", `{"video_id":"v","percent":1}`).accepted(t)
	// A second later the busy user has one token again, and only one.
	e.clock.add(time.Second)
	e.post(busy, "/v1/progress", `{"video_id":"w","percent":1}`).accepted(t)
	e.post(busy, "/v1/progress", `{"video_id":"x","percent":1}`).problem(t, http.StatusTooManyRequests)
}

func TestBufferOverHighWater(t *testing.T) {
	e := newEnv(t, func(s *setup) { s.opts = redisbuf.Options{Shards: 1, HighWater: 2} })
	a, b := e.user("a"), e.user("b")
	e.post(a, "/v1/progress", `{"video_id":"v1","percent":1}`).accepted(t)
	e.post(a, "/v1/progress", `{"video_id":"v2","percent":1}`).accepted(t)

	full := []struct {
		name string
		do   func() resp
	}{
		{"new video", func() resp { return e.post(a, "/v1/progress", `{"video_id":"v3","percent":1}`) }},
		{"another user", func() resp { return e.post(b, "/v1/progress", `{"video_id":"v1","percent":1}`) }},
		{"batch with an update and a new video", func() resp {
			return e.post(a, "/v1/progress/batch", `{"events":[{"video_id":"v1","percent":99},{"video_id":"v3","percent":1}]}`)
		}},
		{"removal of a video not pending", func() resp {
			return e.do(req{method: http.MethodDelete, path: "/v1/progress/v3", auth: "Bearer " + token(t, a)})
		}},
	}
	for _, tc := range full {
		t.Run(tc.name, func(t *testing.T) {
			nothingStored(t, e, a, func() {
				r := tc.do()
				r.problem(t, http.StatusServiceUnavailable)
				if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra < 1 {
					t.Errorf("Retry-After %q", r.header.Get("Retry-After"))
				}
			})
			if len(e.pending(b)) != 0 {
				t.Fatalf("stored for b")
			}
		})
	}
	t.Run("updates of pending entries are still accepted", func(t *testing.T) {
		e.clock.add(time.Second)
		e.post(a, "/v1/progress", `{"video_id":"v1","percent":50}`).accepted(t)
		if got := e.pending(a); len(got) != 2 || got["v1"].Percent != 50 {
			t.Fatalf("stored %v", got)
		}
	})
}

func TestRedisDown(t *testing.T) {
	// Fail fast: one dial attempt and one retry per command instead of the
	// client's defaults, which take seconds against a stopped server.
	e := newEnv(t, func(s *setup) { s.client.DialerRetries, s.client.MaxRetries = 1, 1 })
	user := e.user("u")
	if r := e.do(req{method: http.MethodGet, path: "/readyz"}); r.status != http.StatusOK {
		t.Fatalf("readyz %d %s", r.status, r.body)
	}
	e.redis.Stop()
	for _, path := range []string{"/v1/progress", "/v1/progress/batch"} {
		body := `{"video_id":"v","percent":1}`
		if strings.HasSuffix(path, "batch") {
			body = `{"events":[` + body + `]}`
		}
		r := e.post(user, path, body)
		p := r.problem(t, http.StatusServiceUnavailable)
		if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra < 1 {
			t.Errorf("Retry-After %q", r.header.Get("Retry-After"))
		}
		if strings.Contains(p.Detail, "127.0.0.1") || strings.Contains(p.Detail, "refused") {
			t.Errorf("the problem reveals internals: %q", p.Detail)
		}
	}
	e.do(req{method: http.MethodDelete, path: "/v1/progress/v", auth: "Bearer " + token(t, user)}).
		problem(t, http.StatusServiceUnavailable)
	if r := e.do(req{method: http.MethodGet, path: "/readyz"}); r.status != http.StatusServiceUnavailable {
		t.Fatalf("readyz %d while redis is down, want 503", r.status)
	}
	if r := e.do(req{method: http.MethodGet, path: "/healthz"}); r.status != http.StatusOK {
		t.Fatalf("healthz %d while redis is down", r.status)
	}

	e.redis.Start() // empty: the test server keeps nothing on disk
	if got := e.pending(user); len(got) != 0 {
		t.Fatalf("stored %v", got)
	}
	if r := e.do(req{method: http.MethodGet, path: "/readyz"}); r.status != http.StatusOK {
		t.Fatalf("readyz after restart %d %s", r.status, r.body)
	}
	e.post(user, "/v1/progress", `{"video_id":"v","percent":1}`).accepted(t)
	if got := e.pending(user); len(got) != 1 {
		t.Fatalf("stored %v after restart", got)
	}
}

func TestMetricsCountEvents(t *testing.T) {
	e := newEnv(t, func(s *setup) { s.edge.Rate.Limit, s.edge.Rate.Burst = 1, 1; s.edge.BodyLimit = 512 })
	e.listen()
	u := func() string { return e.user("u") }
	e.post(u(), "/v1/progress", `{"video_id":"v","percent":1}`).accepted(t)
	e.post(u(), "/v1/progress", `{"video_id":"v","percent":1}`).accepted(t)
	e.post(u(), "/v1/progress/batch", `{"events":[{"video_id":"a","percent":1},{"video_id":"b","percent":1},{"video_id":"c","percent":-1}]}`).accepted(t)
	e.do(req{method: http.MethodDelete, path: "/v1/progress/v", auth: "Bearer " + token(t, u())}).accepted(t)
	e.post(u(), "/v1/progress", `{"video_id":"v","percent":101}`).problem(t, http.StatusUnprocessableEntity)
	e.post(u(), "/v1/progress", `{`).problem(t, http.StatusBadRequest)
	e.post(u(), "/v1/progress", `[]`).problem(t, http.StatusBadRequest)
	e.do(req{path: "/v1/progress", body: `{"video_id":"v","percent":1}`}).problem(t, http.StatusUnauthorized)
	e.do(req{path: "/v1/progress", body: `{"video_id":"v","percent":1}`, ctype: "text/plain", auth: "Bearer " + token(t, u())}).
		problem(t, http.StatusUnsupportedMediaType)
	e.post(u(), "/v1/progress", `{"video_id":"v","percent":1,"pad":"`+strings.Repeat("x", 600)+`"}`).
		problem(t, http.StatusRequestEntityTooLarge)
	busy := u()
	e.post(busy, "/v1/progress", `{"video_id":"v","percent":1}`).accepted(t)
	e.post(busy, "/v1/progress", `{"video_id":"v","percent":1}`).problem(t, http.StatusTooManyRequests)

	r := e.do(req{method: http.MethodGet, path: "/metrics"})
	if r.status != http.StatusOK {
		t.Fatalf("metrics %d", r.status)
	}
	text := string(r.body)
	want := map[string]string{
		`keepwatch_events_accepted_total{service="command"}`:                                               "6",
		`keepwatch_events_rejected_total{reason="invalid",service="command"}`:                              "2",
		`keepwatch_events_rejected_total{reason="malformed",service="command"}`:                            "2",
		`keepwatch_events_rejected_total{reason="unauthorized",service="command"}`:                         "1",
		`keepwatch_events_rejected_total{reason="unsupported_media_type",service="command"}`:               "1",
		`keepwatch_events_rejected_total{reason="too_large",service="command"}`:                            "1",
		`keepwatch_events_rejected_total{reason="rate_limited",service="command"}`:                         "1",
		`keepwatch_events_rejected_total{reason="unavailable",service="command"}`:                          "0",
		`keepwatch_events_rejected_total{reason="buffer_full",service="command"}`:                          "0",
		`keepwatch_http_request_duration_seconds_count{code="202",route="/v1/progress",service="command"}`: "3",
	}
	for series, v := range want {
		if got := metricValue(text, series); got != v {
			t.Errorf("%s = %q, want %s", series, got, v)
		}
	}
	for _, name := range []string{"keepwatch_commit_batch_size_count", `keepwatch_ready{service="command"} 1`} {
		if !strings.Contains(text, name) {
			t.Errorf("/metrics has no %s", name)
		}
	}
}

// metricValue returns the value of one series in the text exposition format.
func metricValue(text, series string) string {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	return ""
}

func TestHealthAndUnknownRoutes(t *testing.T) {
	e := newEnv(t)
	if r := e.do(req{method: http.MethodGet, path: "/healthz"}); r.status != http.StatusOK {
		t.Fatalf("healthz %d", r.status)
	}
	if r := e.do(req{method: http.MethodGet, path: "/readyz"}); r.status != http.StatusOK {
		t.Fatalf("readyz %d", r.status)
	}
	e.do(req{method: http.MethodGet, path: "/v1/nothing"}).problem(t, http.StatusNotFound)
	// A known path with another method is 405 with the methods it has
	// (DELETE /v1/progress/batch removes a video named "batch").
	for path, allow := range map[string]string{"/v1/progress": "POST, DELETE", "/v1/progress/batch": "POST, DELETE", "/v1/progress/v": "DELETE"} {
		for _, method := range []string{http.MethodGet, http.MethodPut, http.MethodPatch} {
			r := e.do(req{method: method, path: path, auth: "Bearer " + token(t, "u")})
			if p := r.problem(t, http.StatusMethodNotAllowed); p.Type != "urn:keepwatch:problem:method_not_allowed" {
				t.Errorf("%s %s: type %q", method, path, p.Type)
			}
			if got := r.header.Get("Allow"); got != allow {
				t.Errorf("%s %s: Allow %q, want %q", method, path, got, allow)
			}
		}
	}
	e.shell.Drain()
	if r := e.do(req{method: http.MethodGet, path: "/readyz"}); r.status != http.StatusServiceUnavailable {
		t.Fatalf("readyz %d while draining, want 503", r.status)
	}
}

// TestTwoAuthorizationHeadersAreRefused: a proxy and keepwatch could each
// read another of two Authorization headers; such a request is 400 and
// stores nothing.
func TestTwoAuthorizationHeadersAreRefused(t *testing.T) {
	e := newEnv(t)
	user, other := e.user("u"), e.user("other")
	nothingStored(t, e, user, func() {
		hr := httptest.NewRequest(http.MethodPost, "/v1/progress", strings.NewReader(`{"video_id":"v","percent":1}`))
		hr.Header.Set("Content-Type", "application/json")
		hr.Header.Add("Authorization", "Bearer "+token(t, user))
		hr.Header.Add("Authorization", "Bearer "+token(t, other))
		res, err := e.shell.App().Test(hr, -1)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		_ = res.Body.Close()
		resp{status: res.StatusCode, header: res.Header, body: b}.problem(t, http.StatusBadRequest)
	})
	if len(e.pending(other)) != 0 {
		t.Fatal("stored for the second header's user")
	}
}

// TestInvalidJSONInIgnoredFieldIsMalformed guards the 400 for bodies that are
// not JSON: the lazy parser does not look inside strings it is not asked for,
// so a broken escape or a raw control character in an unknown field must
// still be caught.
func TestInvalidJSONInIgnoredFieldIsMalformed(t *testing.T) {
	e := newEnv(t)
	bodies := map[string]string{
		"bad escape":            `{"video_id":"v","percent":1,"note":"\q"}`,
		"raw control character": "{\"video_id\":\"v\",\"percent\":1,\"note\":\"a\x01b\"}",
		"bad unicode escape":    `{"video_id":"v","percent":1,"note":"\u12"}`,
		"bad escape in a video": `{"video_id":"\x","percent":1}`,
		"bad escape in a batch": `{"events":[{"video_id":"v","percent":1,"note":"\q"}]}`,
	}
	for name, body := range bodies {
		t.Run(name, func(t *testing.T) {
			user := e.user("u")
			path := "/v1/progress"
			if strings.Contains(name, "batch") {
				path += "/batch"
			}
			nothingStored(t, e, user, func() {
				e.post(user, path, body).problem(t, http.StatusBadRequest)
			})
		})
	}
}

// TestDurationRoundingToZeroIsInvalid guards duration > 0 after rounding to
// milliseconds: 0.0004 s passes a check made before rounding and would be
// stored as a duration of 0.
func TestDurationRoundingToZeroIsInvalid(t *testing.T) {
	e := newEnv(t)
	for _, path := range []string{"/v1/progress", "/v1/progress/batch"} {
		t.Run(path, func(t *testing.T) {
			user := e.user("u")
			body := `{"video_id":"v","percent":1,"duration":0.0004}`
			want := []string{"duration"}
			if strings.HasSuffix(path, "batch") {
				body, want = `{"events":[`+body+`]}`, []string{"events[0].duration"}
			}
			nothingStored(t, e, user, func() {
				p := e.post(user, path, body).problem(t, http.StatusUnprocessableEntity)
				if !slices.Equal(p.fields(), want) {
					t.Errorf("fields %q, want %q", p.fields(), want)
				}
			})
		})
	}
}

// TestBatchRepeatingOneNewVideoFitsUnderHighWater guards the high-water
// count: a batch that names one new video twice adds one entry, so it must be
// accepted when exactly one entry is still free.
func TestBatchRepeatingOneNewVideoFitsUnderHighWater(t *testing.T) {
	e := newEnv(t, func(s *setup) { s.opts = redisbuf.Options{Shards: 1, HighWater: 2} })
	user := e.user("u")
	e.post(user, "/v1/progress", `{"video_id":"v1","percent":1}`).accepted(t)
	e.post(user, "/v1/progress/batch", `{"sent_at":2000,"events":[{"video_id":"v2","percent":1,"ts":1000},{"video_id":"v2","percent":2,"ts":1500}]}`).accepted(t)
	if got := e.pending(user); len(got) != 2 || got["v2"].Percent != 2 {
		t.Fatalf("stored %v", got)
	}
}

// TestPprofNeedsTheAdminToken: the profiler is served only with
// --admin-token set, and only to a request bearing exactly that token; the
// command line, which may hold secrets, not even then.
func TestPprofNeedsTheAdminToken(t *testing.T) {
	e := newEnv(t, func(s *setup) { s.edge.AdminToken = "adm1n" })
	for name, tc := range map[string]struct {
		auth string
		want int
	}{
		"no token":         {"", http.StatusUnauthorized},
		"wrong token":      {"Bearer adm1m", http.StatusUnauthorized},
		"longer token":     {"Bearer adm1n2", http.StatusUnauthorized},
		"a player's token": {"Bearer " + token(t, "p"), http.StatusUnauthorized},
		"admin token":      {"Bearer adm1n", http.StatusOK},
	} {
		t.Run(name, func(t *testing.T) {
			r := e.do(req{method: http.MethodGet, path: "/debug/pprof/heap", auth: tc.auth})
			if r.status != tc.want {
				t.Fatalf("status %d, want %d", r.status, tc.want)
			}
		})
	}
	if r := e.do(req{method: http.MethodGet, path: "/debug/pprof/cmdline", auth: "Bearer adm1n"}); r.status != http.StatusNotFound {
		t.Fatalf("cmdline with the admin token: status %d, want 404", r.status)
	}
	off := newEnv(t)
	if r := off.do(req{method: http.MethodGet, path: "/debug/pprof/heap", auth: "Bearer "}); r.status != http.StatusNotFound {
		t.Fatalf("without --admin-token: status %d, want 404", r.status)
	}
}

// TestRepeatedKeyIsMalformed guards the one meaning of a body: a key named
// twice in one object, however it is spelled and wherever it is, is 400 for
// the whole request, with a message naming the key. (First-wins here and
// last-wins in encoding/json, browsers and Python would let a gateway
// validate one event while keepwatch stores another.)
func TestRepeatedKeyIsMalformed(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		name, path, body, key string
	}{
		{"percent", "/v1/progress", `{"video_id":"v","percent":10,"percent":90}`, `"percent"`},
		{"percent escaped", "/v1/progress", `{"video_id":"v","percent":10,"perc\u0065nt":90}`, `"percent"`},
		{"video id", "/v1/progress", `{"video_id":"v","video_id":"w","percent":1}`, `"video_id"`},
		{"unknown", "/v1/progress", `{"video_id":"v","percent":1,"note":"a","note":"b"}`, `"note"`},
		{"nested unknown", "/v1/progress", `{"video_id":"v","percent":1,"x":{"y":[{"z":1,"z":2}]}}`, `"z"`},
		{"batch envelope", "/v1/progress/batch", `{"events":[{"video_id":"a","percent":1}],"events":[]}`, `"events"`},
		{"batch event", "/v1/progress/batch", `{"events":[{"video_id":"a","percent":1},{"video_id":"b","percent":1,"percent":2}]}`, `"percent"`},
		{"batch invalid event", "/v1/progress/batch", `{"events":[{"video_id":"a","percent":1},{"ts":-1,"ts":2}]}`, `"ts"`},
		{"batch nested", "/v1/progress/batch", `{"events":[{"video_id":"a","percent":1,"x":{"k":1,"\u006b":2}}]}`, `"k"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			user := e.user("u")
			nothingStored(t, e, user, func() {
				p := e.post(user, tc.path, tc.body).problem(t, http.StatusBadRequest)
				if p.Type != "urn:keepwatch:problem:malformed" || !strings.Contains(p.Detail, tc.key) || !strings.Contains(p.Detail, "twice") {
					t.Errorf("type %q detail %q, want malformed naming %s", p.Type, p.Detail, tc.key)
				}
			})
		})
	}
}

// TestAmbiguousBodiesAreMalformed covers the other bodies JSON libraries
// read differently: invalid UTF-8 and lone surrogates (replaced by some,
// refused by others), a key in another case (encoding/json matches keys
// ignoring case), and nesting past --max-json-depth.
func TestAmbiguousBodiesAreMalformed(t *testing.T) {
	e := newEnv(t, func(s *setup) { s.cfg.MaxJSONDepth = 4 })
	for _, tc := range []struct {
		name, path, body, says string
	}{
		{"invalid UTF-8", "/v1/progress", "{\"video_id\":\"v\",\"percent\":1,\"x\":\"\xff\"}", "UTF-8"},
		{"lone surrogate", "/v1/progress", `{"video_id":"v","percent":1,"x":"\ud800"}`, "surrogate"},
		{"case", "/v1/progress", `{"video_id":"v","percent":1,"Percent":50}`, `"Percent" differs from "percent" only in case`},
		{"case by folding", "/v1/progress", `{"video_id":"v","percent":1,"ſent_at":5}`, `differs from "sent_at" only in case`},
		{"case in a batch event", "/v1/progress/batch", `{"events":[{"video_id":"a","percent":1,"TS":5}]}`, `"TS" of events[0] differs from "ts"`},
		{"case in a batch envelope", "/v1/progress/batch", `{"Sent_At":1,"events":[{"video_id":"a","percent":1}]}`, `differs from "sent_at"`},
		{"too deep", "/v1/progress", `{"video_id":"v","percent":1,"x":[[[[1]]]]}`, "deeper than 4"},
		{"too deep in a batch", "/v1/progress/batch", `{"events":[{"video_id":"a","percent":1,"x":[[1]]}]}`, "deeper than 4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			user := e.user("u")
			nothingStored(t, e, user, func() {
				p := e.post(user, tc.path, tc.body).problem(t, http.StatusBadRequest)
				if !strings.Contains(p.Detail, tc.says) {
					t.Errorf("detail %q, want it to say %q", p.Detail, tc.says)
				}
			})
		})
	}
	t.Run("at the depth limit", func(t *testing.T) {
		user := e.user("u")
		e.post(user, "/v1/progress", `{"video_id":"v","percent":1,"x":[[[]]]}`).accepted(t)
		e.post(user, "/v1/progress/batch", `{"events":[{"video_id":"a","percent":1,"x":[]}]}`).accepted(t)
	})
}

// TestNumberRulesOnTheSpelledDecimal guards the bounds against float64
// rounding: a number is checked as the decimal the body spells, as the
// OpenAPI document's validator reads it, and stored as encoding/json reads it.
func TestNumberRulesOnTheSpelledDecimal(t *testing.T) {
	e := newEnv(t)
	recv := e.clock.millis()
	for _, tc := range []struct {
		name, event string
		field       string // the invalid field; "" when accepted
		want        keepwatch.State
	}{
		{"percent just over 100", `{"video_id":"v","percent":100.00000000000000001}`, "percent", keepwatch.State{}},
		{"percent just under 100", `{"video_id":"v","percent":99.999999999999999999}`, "",
			keepwatch.State{EventTime: recv, Percent: 100, Position: unknown, Duration: unknown, Episode: unknown}},
		{"negative percent under the float's reach", `{"video_id":"v","percent":-1e-400}`, "percent", keepwatch.State{}},
		{"negative position that rounds to 0", `{"video_id":"v","percent":1,"position":-0.0004}`, "position", keepwatch.State{}},
		{"negative zero position", `{"video_id":"v","percent":1,"position":-0.0}`, "",
			keepwatch.State{EventTime: recv, Percent: 1, Position: 0, Duration: unknown, Episode: unknown}},
		{"position over the maximum by less than a float", `{"video_id":"v","percent":1,"position":99999999.9990000001}`, "position", keepwatch.State{}},
		{"duration under a millisecond", `{"video_id":"v","percent":1,"duration":0.0005}`, "duration", keepwatch.State{}},
		{"duration of a millisecond", `{"video_id":"v","percent":1,"duration":1e-3}`, "",
			keepwatch.State{EventTime: recv, Percent: 1, Position: unknown, Duration: 0.001, Episode: unknown}},
		{"ts past 2^53", `{"video_id":"v","percent":1,"ts":9007199254740993}`, "ts", keepwatch.State{}},
		{"ts a fraction a float cannot hold", `{"video_id":"v","percent":1,"ts":1732240000000.00000001}`, "ts", keepwatch.State{}},
		{"ts with an exponent", `{"video_id":"v","percent":1,"ts":1.73224e12,"sent_at":1732240000350.0}`, "",
			keepwatch.State{EventTime: recv - 350, Percent: 1, Position: unknown, Duration: unknown, Episode: unknown}},
	} {
		for _, path := range []string{"/v1/progress", "/v1/progress/batch"} {
			t.Run(tc.name+" "+path, func(t *testing.T) {
				user := e.user("u")
				body, field := tc.event, tc.field
				if strings.HasSuffix(path, "batch") {
					if strings.Contains(body, "sent_at") {
						return // sent_at belongs to the envelope
					}
					body = `{"events":[` + body + `]}`
					if field != "" {
						field = "events[0]." + field
					}
				}
				if field != "" {
					nothingStored(t, e, user, func() {
						p := e.post(user, path, body).problem(t, http.StatusUnprocessableEntity)
						if !slices.Equal(p.fields(), []string{field}) {
							t.Errorf("fields %q, want %s", p.fields(), field)
						}
					})
					return
				}
				e.post(user, path, body).accepted(t)
				if got := e.pending(user)["v"]; got != tc.want {
					t.Fatalf("stored %+v, want %+v", got, tc.want)
				}
			})
		}
	}
}

// TestTokenRules holds the command API to the token rules, on tokens whose
// every byte the test controls: each refused token gets 401 on every write
// route and stores nothing.
func TestTokenRules(t *testing.T) {
	e := newEnv(t, func(s *setup) {
		s.auth.Issuer, s.auth.Audience, s.auth.MaxTTL = "https://id.example", "keepwatch", 2*time.Hour
	})
	now := time.Now()
	at := func(d time.Duration) string { return strconv.FormatInt(now.Add(d).Unix(), 10) }
	const hs = `{"alg":"HS256","typ":"JWT"}`
	// claims are a valid token's claims for user with extra fields spliced in.
	claims := func(user, extra string) string {
		return `{"sub":"` + user + `","iss":"https://id.example","aud":"keepwatch","iat":` + at(0) + `,"exp":` + at(time.Hour) + extra + `}`
	}
	respell := func(tok string) []string { // the other spellings of the signature's last character
		const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
		last := strings.IndexByte(alphabet, tok[len(tok)-1])
		var out []string
		for _, bit := range []int{1, 2, 3} { // a 32-byte HMAC leaves 2 unused bits
			out = append(out, tok[:len(tok)-1]+string(alphabet[last^bit]))
		}
		return out
	}
	refused := map[string]func(user string) []string{
		"exp a string": func(u string) []string {
			return []string{handToken(hs, `{"sub":"`+u+`","iss":"https://id.example","aud":"keepwatch","iat":`+at(0)+`,"exp":"`+at(time.Hour)+`"}`, secretNew)}
		},
		"iat a string": func(u string) []string {
			return []string{handToken(hs, `{"sub":"`+u+`","iss":"https://id.example","aud":"keepwatch","iat":"`+at(0)+`","exp":`+at(time.Hour)+`}`, secretNew)}
		},
		"nbf a string": func(u string) []string { return []string{handToken(hs, claims(u, `,"nbf":"`+at(0)+`"`), secretNew)} },
		"iat past the leeway": func(u string) []string {
			return []string{handToken(hs, strings.Replace(claims(u, ""), `"iat":`+at(0), `"iat":`+at(2*time.Minute), 1), secretNew)}
		},
		"crit": func(u string) []string {
			return []string{handToken(`{"alg":"HS256","crit":["b64"],"b64":false}`, claims(u, ""), secretNew)}
		},
		"signature respelled": func(u string) []string { return respell(handToken(hs, claims(u, ""), secretNew)) },
		"sub with \\xff":      func(u string) []string { return []string{handToken(hs, claims(u+"\xff", ""), secretNew)} },
		"sub with \\xfe":      func(u string) []string { return []string{handToken(hs, claims(u+"\xfe", ""), secretNew)} },
		"sub twice":           func(u string) []string { return []string{handToken(hs, claims(u, `,"sub":"other"`), secretNew)} },
		"wrong issuer": func(u string) []string {
			return []string{handToken(hs, strings.Replace(claims(u, ""), "id.example", "id.example.evil", 1), secretNew)}
		},
		"no audience": func(u string) []string {
			return []string{handToken(hs, strings.Replace(claims(u, ""), `"aud":"keepwatch",`, "", 1), secretNew)}
		},
		"lifetime over the max": func(u string) []string {
			return []string{handToken(hs, strings.Replace(claims(u, ""), `"exp":`+at(time.Hour), `"exp":`+at(3*time.Hour), 1), secretNew)}
		},
		"no iat with a max lifetime": func(u string) []string {
			return []string{handToken(hs, strings.Replace(claims(u, ""), `"iat":`+at(0)+`,`, "", 1), secretNew)}
		},
	}
	for name, toks := range refused {
		t.Run(name, func(t *testing.T) {
			user := e.user("u")
			for _, tok := range toks(user) {
				for _, r := range []req{
					{path: "/v1/progress", body: `{"video_id":"v","percent":1}`},
					{path: "/v1/progress/batch", body: `{"events":[{"video_id":"v","percent":1}]}`},
					{method: http.MethodDelete, path: "/v1/progress/v"},
				} {
					r.auth = "Bearer " + tok
					nothingStored(t, e, user, func() {
						for range 2 { // a refused token is never cached
							e.do(r).problem(t, http.StatusUnauthorized)
						}
					})
				}
			}
		})
	}
	t.Run("the exactly right token", func(t *testing.T) {
		user := e.user("u")
		tok := handToken(hs, claims(user, `,"nbf":`+at(30*time.Second)), secretNew) // nbf within the leeway
		for range 2 {
			e.do(req{path: "/v1/progress", body: `{"video_id":"v","percent":1}`, auth: "Bearer " + tok}).accepted(t)
		}
		minted, err := auth.MintFor(secretOld, user, time.Hour, "https://id.example", "keepwatch")
		if err != nil {
			t.Fatal(err)
		}
		e.do(req{path: "/v1/progress", body: `{"video_id":"w","percent":2}`, auth: "Bearer " + minted}).accepted(t)
		if got := e.pending(user); len(got) != 2 {
			t.Fatalf("stored %v", got)
		}
	})
}
