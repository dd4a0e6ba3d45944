package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keepwatch/keepwatch/internal/auth"
	"github.com/keepwatch/keepwatch/internal/testenv"
	"github.com/keepwatch/keepwatch/storage/redisbuf"
)

// startQuery runs `keepwatch query` through Main on a free port and waits
// for /readyz; it returns the base URL and a stop function that sends the
// equivalent of SIGTERM and returns Main's exit code.
func startQuery(t *testing.T, vars map[string]string) (string, func() int) {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	vars["KEEPWATCH_HTTP_ADDR"] = addr
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		code, _, errOut := runMain(t, ctx, vars, "query")
		if code != 0 {
			t.Logf("keepwatch query: exit %d\n%s", code, errOut)
		}
		done <- code
	}()
	var stopped bool
	stop := func() int {
		if stopped {
			return 0
		}
		stopped = true
		cancel()
		return <-done
	}
	t.Cleanup(func() { stop() })
	base := "http://" + addr
	testenv.Await(t, 30*time.Second, "keepwatch query to be ready", func() error {
		select {
		case code := <-done:
			stopped = true // nothing left to stop, or to wait for
			t.Fatalf("keepwatch query exited with %d before it was ready", code)
		default:
		}
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/readyz answered %s", resp.Status)
		}
		return nil
	})
	return base, stop
}

func getAs(t *testing.T, url, user string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if user != "" {
		tok, err := auth.Mint("s3cret", user, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

func TestQueryServes(t *testing.T) {
	m := testenv.StartMongo(t)
	r := testenv.StartRedis(t)
	base, stop := startQuery(t, map[string]string{
		"KEEPWATCH_MONGO_URI": m.URI, "KEEPWATCH_MONGO_DB": m.Database, "KEEPWATCH_MIGRATE": "true",
		"KEEPWATCH_REDIS_URL": r.URL(), "KEEPWATCH_AUTH_SECRET": "old,s3cret",
		"KEEPWATCH_CORS_ORIGINS": "https://app.example.com",
	})
	if resp, body := getAs(t, base+"/v1/keep-watching", "alice"); resp.StatusCode != 200 || body != `{"items":[]}` ||
		resp.Header.Get("X-Keepwatch-Overlay") != "" {
		t.Fatalf("keep-watching: %d %v %s", resp.StatusCode, resp.Header, body)
	}
	if resp, body := getAs(t, base+"/openapi.json", ""); resp.StatusCode != 200 || !strings.Contains(body, `"openapi"`) {
		t.Fatalf("openapi.json: %d", resp.StatusCode)
	}
	if resp, body := getAs(t, base+"/metrics", ""); resp.StatusCode != 200 || !strings.Contains(body, "keepwatch_query_overlay_hits_total") ||
		!strings.Contains(body, `keepwatch_token_verifications_total{service="query"} 1`+"\n") {
		t.Fatalf("metrics: %d, want the overlay counters and one token verification:\n%s", resp.StatusCode, body)
	}
	if code := stop(); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
}

// TestQueryRefusesAnotherShardCount: a query service with another
// --redis-shards than the buffer's data would overlay nothing, silently
// serving stale progress; it refuses to start and names the data's count.
func TestQueryRefusesAnotherShardCount(t *testing.T) {
	m := testenv.StartMongo(t)
	r := testenv.StartRedis(t)
	buf, err := redisbuf.New(r.Client(), redisbuf.Options{Shards: 4})
	if err != nil {
		t.Fatal(err)
	}
	if err := buf.CheckShards(context.Background()); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := runMain(t, context.Background(), map[string]string{
		"KEEPWATCH_MONGO_URI": m.URI, "KEEPWATCH_MONGO_DB": m.Database, "KEEPWATCH_MIGRATE": "true",
		"KEEPWATCH_REDIS_URL": r.URL(), "KEEPWATCH_REDIS_SHARDS": "8", "KEEPWATCH_AUTH_SECRET": "s3cret",
		"KEEPWATCH_HTTP_ADDR": "127.0.0.1:0",
	}, "query")
	if code != 1 || !strings.Contains(errOut, "--redis-shards 4") {
		t.Fatalf("exit code %d, want 1 naming the data's count:\n%s", code, errOut)
	}
}

// TestQueryStartsWithoutRedis guards the read side's independence from the
// buffer: Redis down at start is served from MongoDB, and the overlay comes
// back by itself when Redis does.
func TestQueryStartsWithoutRedis(t *testing.T) {
	m := testenv.StartMongo(t)
	r := testenv.StartRedis(t)
	r.Stop()
	base, _ := startQuery(t, map[string]string{
		"KEEPWATCH_MONGO_URI": m.URI, "KEEPWATCH_MONGO_DB": m.Database, "KEEPWATCH_MIGRATE": "true",
		"KEEPWATCH_REDIS_URL": r.URL(), "KEEPWATCH_REDIS_TIMEOUT": "200ms", "KEEPWATCH_AUTH_SECRET": "s3cret",
	})
	resp, body := getAs(t, base+"/v1/keep-watching", "alice")
	if resp.StatusCode != 200 || resp.Header.Get("X-Keepwatch-Overlay") != "unavailable" {
		t.Fatalf("without Redis: %d %v %s", resp.StatusCode, resp.Header, body)
	}
	r.Start()
	testenv.Eventually(t, 30*time.Second, "the overlay to come back with Redis", func() bool {
		resp, _ := getAs(t, base+"/v1/keep-watching", "alice")
		return resp.StatusCode == 200 && resp.Header.Get("X-Keepwatch-Overlay") == ""
	})
}
