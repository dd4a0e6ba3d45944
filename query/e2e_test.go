package query_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepwatch/keepwatch/command"
	"github.com/keepwatch/keepwatch/internal/auth"
	"github.com/keepwatch/keepwatch/internal/edge"
)

// TestPostThenQuery is the newcomer's path: progress POSTed to the command
// side shows in the query side at once (from the buffer), and the same after
// the flush moved it to MongoDB (same body, same ETag).
func TestPostThenQuery(t *testing.T) {
	e := newEnv(t)
	verifier, err := auth.NewVerifier([]string{secret}, 100)
	if err != nil {
		t.Fatal(err)
	}
	ecfg := command.DefaultEdge()
	ecfg.Rate.Limit = 0
	reg := prometheus.NewRegistry()
	log := slog.New(slog.DiscardHandler)
	shell, err := edge.New(ecfg, edge.Deps{Verifier: verifier, Ready: e.buf.Ping, Registerer: reg, Gatherer: reg, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	cmd, err := command.New(command.DefaultConfig(), shell, e.buf, reg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = shell.Shutdown(context.Background()); cmd.Close() })
	post := func(body string) {
		t.Helper()
		req := httptest.NewRequest(http.MethodPost, "/v1/progress", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+token(t, "alice"))
		resp, err := shell.App().Test(req, 10_000)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("POST %s: %d %s", body, resp.StatusCode, b)
		}
	}

	e.stored("alice", "old", at(base, 30))
	post(`{"video_id":"movie-1","percent":42.5,"position":1147.5,"duration":2700}`)

	resp := e.get("alice", "/v1/keep-watching")
	before := decode[items](t, resp, 200)
	tag := resp.Header.Get("ETag")
	if ids(before) != "movie-1:42.5 old:30" || *before.Items[0].Position != 1147.5 || *before.Items[0].Duration != 2700 {
		t.Fatalf("before the flush: %+v", before)
	}

	// The flush, as the flusher does it: claim, write with newest-wins, release.
	ctx := context.Background()
	for shard := range e.buf.Shards() {
		c, err := e.buf.Claim(ctx, shard, 100, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if len(c.Entries) == 0 {
			continue
		}
		if _, err := e.store.WriteProgress(ctx, c.Entries); err != nil {
			t.Fatal(err)
		}
		done := make([]int, len(c.Entries))
		for i := range done {
			done[i] = i
		}
		if err := e.buf.Release(ctx, c, done, 0); err != nil {
			t.Fatal(err)
		}
	}
	if p, err := e.buf.Pending(ctx, "alice"); err != nil || len(p) != 0 {
		t.Fatalf("still pending after the flush: %v %v", p, err)
	}

	resp = e.get("alice", "/v1/keep-watching", "If-None-Match", tag)
	if resp.StatusCode != http.StatusNotModified {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("after the flush: %d %s (ETag %s, was %s)", resp.StatusCode, body, resp.Header.Get("ETag"), tag)
	}
	one := decode[item](t, e.get("alice", "/v1/progress/movie-1"), 200)
	if one.Percent != 42.5 {
		t.Fatalf("after the flush: %+v", one)
	}
}
