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
		resp, err := e.shell.App().Test(req, -1)
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
	deleteFrom := func(t *testing.T, e *env, origin, auth string) *http.Response {
		t.Helper()
		req := httptest.NewRequest(http.MethodDelete, "/v1/progress/v", nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Authorization", auth)
		resp, err := e.shell.App().Test(req, -1)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	t.Run("off by default", func(t *testing.T) {
		e := newEnv(t)
		if h := preflight(t, e, origin).Header.Get("Access-Control-Allow-Origin"); h != "" {
			t.Fatalf("preflight allowed %q with CORS off", h)
		}
	})
	t.Run("allowed origin", func(t *testing.T) {
		e := newEnv(t, func(s *setup) { s.edge.CORS.Origins = []string{origin, "http://localhost:8082"} })
		p := preflight(t, e, origin)
		if p.StatusCode != http.StatusNoContent || p.Header.Get("Access-Control-Allow-Origin") != origin {
			t.Fatalf("preflight: %d %v", p.StatusCode, p.Header)
		}
		// Long enough that the keepalive post of a page being hidden finds
		// the preflight cached.
		if p.Header.Get("Access-Control-Max-Age") != "7200" {
			t.Errorf("Access-Control-Max-Age %q", p.Header.Get("Access-Control-Max-Age"))
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
		if del := deleteFrom(t, e, origin, "Bearer "+token(t, e.user("u"))); del.StatusCode != http.StatusAccepted ||
			del.Header.Get("Access-Control-Allow-Origin") != origin {
			t.Fatalf("DELETE: %d %v", del.StatusCode, del.Header)
		}
		if h := preflight(t, e, "https://evil.example.com").Header.Get("Access-Control-Allow-Origin"); h != "" {
			t.Fatalf("another origin allowed: %q", h)
		}
	})
	t.Run("a refusal the player's script can read", func(t *testing.T) {
		e := newEnv(t, func(s *setup) {
			s.edge.CORS.Origins = []string{origin}
			s.edge.Rate.Limit, s.edge.Rate.Burst = 0.01, 1
		})
		auth := "Bearer " + token(t, e.user("u"))
		for i, want := range []int{http.StatusAccepted, http.StatusTooManyRequests} {
			post := send(t, e, http.MethodPost, origin, "Authorization", auth, "Content-Type", "application/json")
			if post.StatusCode != want || post.Header.Get("Access-Control-Allow-Origin") != origin || post.Header.Get("Retry-After") == "" && want == 429 {
				t.Fatalf("POST %d: %d %v", i+1, post.StatusCode, post.Header)
			}
		}
	})
	t.Run("bad origin refused", func(t *testing.T) {
		cfg := command.DefaultEdge()
		cfg.CORS.Origins = []string{"player.example.com"}
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "--cors-origins") {
			t.Fatalf("Validate = %v", err)
		}
	})
}
