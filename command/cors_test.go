package command_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/keepwatch/keepwatch/command"
)

// TestCORSLetsWebPlayersPost: with --cors-origins, a player page on an
// allowed origin may preflight and post with its bearer token, and can read
// Retry-After; other origins get no CORS headers, and CORS is off by default.
func TestCORSLetsWebPlayersPost(t *testing.T) {
	const origin = "https://player.example.com"
	send := func(t *testing.T, e *env, method, origin string, hdr ...string) *http.Response {
		t.Helper()
		var body *strings.Reader
		if method == http.MethodPost {
			body = strings.NewReader(`{"video_id":"v","percent":1}`)
		} else {
			body = strings.NewReader("")
		}
		req := httptest.NewRequest(method, "/v1/progress", body)
		req.Header.Set("Origin", origin)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := e.svc.App().Test(req, -1)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	preflight := func(t *testing.T, e *env, origin string) *http.Response {
		return send(t, e, http.MethodOptions, origin,
			"Access-Control-Request-Method", "POST", "Access-Control-Request-Headers", "authorization,content-type")
	}
	t.Run("off by default", func(t *testing.T) {
		e := newEnv(t)
		if h := preflight(t, e, origin).Header.Get("Access-Control-Allow-Origin"); h != "" {
			t.Fatalf("preflight allowed %q with CORS off", h)
		}
	})
	t.Run("allowed origin", func(t *testing.T) {
		e := newEnv(t, func(s *setup) { s.cfg.CORSOrigins = []string{origin, "http://localhost:8082"} })
		p := preflight(t, e, origin)
		if p.StatusCode != http.StatusNoContent || p.Header.Get("Access-Control-Allow-Origin") != origin {
			t.Fatalf("preflight: %d %v", p.StatusCode, p.Header)
		}
		for h, want := range map[string][]string{
			"Access-Control-Allow-Headers": {"Authorization", "Content-Type"},
			"Access-Control-Allow-Methods": {"POST", "DELETE"},
		} {
			for _, w := range want {
				if !strings.Contains(p.Header.Get(h), w) {
					t.Errorf("%s %q lacks %s", h, p.Header.Get(h), w)
				}
			}
		}
		post := send(t, e, http.MethodPost, origin, "Authorization", "Bearer "+token(t, e.user("u")), "Content-Type", "application/json")
		if post.StatusCode != http.StatusAccepted || post.Header.Get("Access-Control-Allow-Origin") != origin ||
			!strings.Contains(post.Header.Get("Access-Control-Expose-Headers"), "Retry-After") {
			t.Fatalf("POST: %d %v", post.StatusCode, post.Header)
		}
		if h := preflight(t, e, "https://evil.example.com").Header.Get("Access-Control-Allow-Origin"); h != "" {
			t.Fatalf("another origin allowed: %q", h)
		}
	})
	t.Run("bad origin refused", func(t *testing.T) {
		cfg := command.DefaultConfig()
		cfg.Commit.Timeout = 1
		cfg.CORSOrigins = []string{"player.example.com"}
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "--cors-origins") {
			t.Fatalf("Validate = %v", err)
		}
	})
}
