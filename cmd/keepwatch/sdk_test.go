package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/keepwatch/keepwatch/internal/testenv"
	playersdk "github.com/keepwatch/keepwatch/sdk/js"
)

// sdkTestdata holds the browser tests, their pages, the HLS rendition of
// the clip, and their pinned playwright-core and player libraries (npm ci
// there).
const sdkTestdata = "../../sdk/js/testdata"

// browserTools returns node's path, or fails naming the fix: the browser
// tests never skip, since CI (.ci/run) installs what they need.
func browserTools(t *testing.T) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node is not on PATH: install Node.js 20 or later (Debian: apt-get install nodejs); .ci/run does")
	}
	if err := exec.Command(node, "-e", "process.exit(+process.versions.node.split('.')[0] >= 20 ? 0 : 1)").Run(); err != nil {
		t.Fatalf("%s is older than Node.js 20, which the tests' runner and playwright-core need: install Node.js 20 or later", node)
	}
	chromium := os.Getenv("KW_CHROMIUM")
	if chromium == "" {
		chromium = "/usr/bin/chromium"
	}
	if _, err := os.Stat(chromium); err != nil {
		t.Fatalf("%s is missing: apt-get install -y chromium (.ci/run does), or set KW_CHROMIUM", chromium)
	}
	for _, pkg := range []string{"playwright-core", "hls.js", "video.js", "shaka-player"} {
		if _, err := os.Stat(filepath.Join(sdkTestdata, "node_modules", pkg, "package.json")); err != nil {
			t.Fatalf("%s is not installed: run `npm ci` in sdk/js/testdata (.ci/run does)", pkg)
		}
	}
	return node
}

// runNodeTests runs `node --test file` in sdk/js/testdata with vars set,
// failing with everything it printed.
func runNodeTests(t *testing.T, node, file string, vars map[string]string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "--test", "--test-reporter=spec", file)
	cmd.Dir = sdkTestdata
	cmd.Env = os.Environ()
	keys := make([]string, 0, len(vars))
	for k := range vars {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		cmd.Env = append(cmd.Env, k+"="+vars[k])
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node --test %s (in sdk/js/testdata): %v\n%s", file, err, out)
	}
	t.Logf("node --test %s:\n%s", file, out)
}

// startService runs a keepwatch subcommand through Main on a free port until
// the test ends, and returns its base URL once /readyz answers 200.
func startService(t *testing.T, args ...string) string {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	ctx, cancel := context.WithCancel(context.Background())
	done, out := startMain(t, ctx, append(args, "--http-addr", addr)...)
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("keepwatch %s exited with %d\n%s", args[0], code, out)
		}
	})
	waitStatus(t, "http://"+addr+"/readyz", http.StatusOK)
	return "http://" + addr
}

// sdkPages serves the browser tests' pages, the SDK, the clip, its HLS
// rendition and the player libraries' browser builds (from npm ci's
// node_modules), as a player's site would, from an origin of its own.
func sdkPages() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /keepwatch.js", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFileFS(w, r, playersdk.Files, "keepwatch.js")
	})
	mux.HandleFunc("GET /clip.webm", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "video/webm")
		http.ServeFileFS(w, r, playersdk.Files, "demo/clip.webm")
	})
	for _, page := range []string{"player.html", "players.html"} {
		mux.HandleFunc("GET /"+page, func(w http.ResponseWriter, r *http.Request) {
			http.ServeFile(w, r, filepath.Join(sdkTestdata, page))
		})
	}
	libs := map[string]string{
		"hls.min.js":               "hls.js/dist/hls.min.js",
		"video.min.js":             "video.js/dist/video.min.js",
		"shaka-player.compiled.js": "shaka-player/dist/shaka-player.compiled.js",
	}
	mux.HandleFunc("GET /lib/{file}", func(w http.ResponseWriter, r *http.Request) {
		lib, ok := libs[r.PathValue("file")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		http.ServeFile(w, r, filepath.Join(sdkTestdata, "node_modules", lib))
	})
	// Go's MIME table knows neither playlists nor fMP4 segments, and the
	// players check the playlist's type.
	hlsTypes := map[string]string{".m3u8": "application/vnd.apple.mpegurl", ".m4s": "video/mp4", ".mp4": "video/mp4"}
	hls := http.StripPrefix("/hls/", http.FileServer(http.Dir(filepath.Join(sdkTestdata, "hls"))))
	mux.HandleFunc("GET /hls/", func(w http.ResponseWriter, r *http.Request) {
		ct, ok := hlsTypes[path.Ext(r.URL.Path)]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", ct)
		hls.ServeHTTP(w, r)
	})
	return mux
}

// sdkBackend starts what the browser tests run against: Redis, a
// MongoDB-protocol server, the pages (sdkPages), a command API with its
// flusher and the query API, both with the pages' origin in --cors-origins.
// It returns the KW_* variables the scripts read, and the flags every
// keepwatch of the test shares, for more of them.
func sdkBackend(t *testing.T) (vars map[string]string, common []string) {
	t.Helper()
	r := testenv.StartRedis(t)
	m := testenv.StartMongo(t)
	pages := httptest.NewServer(sdkPages())
	t.Cleanup(pages.Close)
	const secret = "browser-test-secret"
	common = []string{"--redis-url", r.URL(), "--mongo-uri", m.URI, "--mongo-db", m.Database, "--migrate",
		"--auth-secret", secret, "--cors-origins", pages.URL, "--shutdown-grace", "2s"}
	command := startService(t, append([]string{"command", "--flush-interval", "200ms"}, common...)...)
	// The scripts poll the query API every 100 ms while they wait: no rate
	// limit there, or the polling itself is refused past the burst.
	query := startService(t, append([]string{"query", "--rate-limit", "0"}, common...)...)
	return map[string]string{
		"KW_PAGES_URL":   pages.URL,
		"KW_COMMAND_URL": command,
		"KW_QUERY_URL":   query,
		"KW_AUTH_SECRET": secret,
	}, common
}

// TestPlayerSDKInChromium runs sdk/js/testdata/e2e.test.js: Debian's
// chromium, driven by playwright-core, plays a real video in a page that
// tracks it with the player SDK, against a real keepwatch on a real Redis
// and MongoDB-protocol server: a command API with its flusher, a second one
// on the same Redis with a tight rate limit (0.2/s, burst 1), and the query
// API, all with the page's origin in --cors-origins. The script checks what
// a player team would: progress lands and shows in keep-watching; pause
// posts at once; offline progress queues and syncs with the newest winning;
// closing the page keeps the last position; a clock three hours off still
// orders right; 429s are backed off without losing the last position; an
// expired token is refreshed.
func TestPlayerSDKInChromium(t *testing.T) {
	node := browserTools(t)
	vars, common := sdkBackend(t)
	vars["KW_LIMITED_COMMAND_URL"] = startService(t, append([]string{"command", "--flush=false", "--rate-limit", "0.2", "--rate-burst", "1"}, common...)...)
	runNodeTests(t, node, "e2e.test.js", vars)
}

// TestPlayerSDKWithPlayerLibrariesInChromium runs
// sdk/js/testdata/players.test.js: hls.js, video.js (VHS) and Shaka Player,
// as pinned in sdk/js/testdata/package-lock.json, each play the clip's HLS
// rendition (sdk/js/testdata/hls) through Media Source Extensions in
// Debian's chromium, and the SDK tracks the <video> the library plays
// through, against the same real keepwatch as TestPlayerSDKInChromium. For
// each library the script checks that heartbeats arrive while it plays and
// none while paused, that a pause and a seek land on the query API with the
// position the page saw and the duration the library set, and that stop()
// detaches.
func TestPlayerSDKWithPlayerLibrariesInChromium(t *testing.T) {
	node := browserTools(t)
	vars, _ := sdkBackend(t)
	runNodeTests(t, node, "players.test.js", vars)
}
