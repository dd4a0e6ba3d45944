package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	mgo "go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/keepwatch/keepwatch"
	"github.com/keepwatch/keepwatch/internal/auth"
	"github.com/keepwatch/keepwatch/internal/testenv"
	"github.com/keepwatch/keepwatch/migrations"
	"github.com/keepwatch/keepwatch/storage/mongo"
)

// percents reads the percent of every progress document.
func percents(t *testing.T, db *mgo.Database) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for id, st := range testenv.ProgressStates(t, db) {
		out[id] = st.Percent
	}
	return out
}

// waitMongo waits until MongoDB holds exactly want.
func waitMongo(t *testing.T, db *mgo.Database, want map[string]float64) {
	t.Helper()
	testenv.Await(t, 60*time.Second, "MongoDB to hold what was posted", func() error {
		if got := percents(t, db); fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("holds %v, want %v", got, want)
		}
		return nil
	})
}

// metric reads a metric from a /metrics page, summed over its series (the
// service label among them).
func metric(t *testing.T, base, name string) float64 {
	t.Helper()
	v, ok := testenv.MetricValue(testenv.Scrape(t, base+"/metrics"), name)
	if !ok {
		t.Fatalf("no %s in %s/metrics", name, base)
	}
	return v
}

// postRounds posts rounds × users × videos events through the command API
// and returns the newest percent per document.
func postRounds(t *testing.T, base string, tokens []string, videos, rounds, first int) map[string]float64 {
	t.Helper()
	want := map[string]float64{}
	for r := first; r < first+rounds; r++ {
		for u, tok := range tokens {
			for v := range videos {
				// Later rounds carry a higher percent, so the last
				// post wins even if two land in the same millisecond.
				pct := float64(r) + float64(v)/100
				body := fmt.Sprintf(`{"video_id":"v%d","percent":%g}`, v, pct)
				if code := postProgress(t, base, tok, body); code != http.StatusAccepted {
					t.Fatalf("POST %s = %d", body, code)
				}
				want[keepwatch.ID(fmt.Sprintf("user%d", u), fmt.Sprintf("v%d", v))] = pct
			}
		}
	}
	return want
}

func mintTokens(t *testing.T, secret string, n int) []string {
	t.Helper()
	var toks []string
	for u := range n {
		tok, err := auth.Mint(secret, fmt.Sprintf("user%d", u), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		toks = append(toks, tok)
	}
	return toks
}

// TestCommandFlushesToMongo: events POSTed to `keepwatch command` (with its
// in-process flusher) reach MongoDB with the newest values.
func TestCommandFlushesToMongo(t *testing.T) {
	r := testenv.StartRedis(t)
	m := testenv.StartMongo(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	base := "http://" + addr
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done, out := startMain(t, ctx, "command", "--http-addr", addr, "--redis-url", r.URL(),
		"--mongo-uri", m.URI, "--mongo-db", m.Database, "--migrate", "--auth-secret", "s",
		"--rate-limit", "0", "--flush-interval", "100ms")
	waitStatus(t, base+"/readyz", http.StatusOK)

	want := postRounds(t, base, mintTokens(t, "s", 3), 4, 3, 1)
	waitMongo(t, m.DB(), want)
	// The counter moves after MongoDB answers the batch, so a moment after
	// the documents can be read.
	testenv.Eventually(t, time.Minute, fmt.Sprintf("keepwatch_flush_written_total to reach %d", len(want)), func() bool {
		return metric(t, base, "keepwatch_flush_written_total") >= float64(len(want))
	})
	// The buffer's backlog, read from Redis at the scrape: drained.
	testenv.Eventually(t, time.Minute, "the backlog gauge to show the drained buffer", func() bool {
		return metric(t, base, "keepwatch_buffer_pending_entries") == 0
	})
	for _, name := range []string{"keepwatch_flush_lease_renewals_total", "keepwatch_flush_claims_lost_total"} {
		if v := metric(t, base, name); v != 0 {
			t.Fatalf("%s = %v, want 0 (batches this small finish within a third of a lease)", name, v)
		}
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit code %d\n%s", code, out)
	}
}

// TestFlushSubcommandCoalesces runs the command API without a flusher and
// `keepwatch flush` once per simulated flush interval, with three posts per
// key in between (a post every 10 s, a flush every 30 s): MongoDB gets one
// write per key per flush, so writes per event = 1/3 ≤ 10 s / 30 s. It also
// checks the flush service's /readyz and /metrics and its clean exit.
func TestFlushSubcommandCoalesces(t *testing.T) {
	r := testenv.StartRedis(t)
	m := testenv.StartMongo(t)
	cmdAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	flushAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmdDone, cmdOut := startMain(t, ctx, "command", "--flush=false", "--http-addr", cmdAddr, "--redis-url", r.URL(),
		"--auth-secret", "s", "--rate-limit", "0")
	waitStatus(t, "http://"+cmdAddr+"/readyz", http.StatusOK)
	if err := migrations.Up(ctx, m.DB(), slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}

	tokens := mintTokens(t, "s", 3)
	const postsPerFlush, cycles = 3, 2
	var events, writes float64
	for c := range cycles {
		want := postRounds(t, "http://"+cmdAddr, tokens, 4, postsPerFlush, 1+c*postsPerFlush)
		events += float64(len(want) * postsPerFlush)
		fctx, fcancel := context.WithCancel(ctx)
		// A flusher that drains at start and then not for an hour: one
		// flush per cycle.
		done, out := startMain(t, fctx, "flush", "--http-addr", flushAddr, "--redis-url", r.URL(),
			"--mongo-uri", m.URI, "--mongo-db", m.Database, "--flush-interval", "1h")
		waitStatus(t, "http://"+flushAddr+"/readyz", http.StatusOK)
		if c == 0 {
			// The flush process exports the backlog it drains.
			if p := metric(t, "http://"+flushAddr, "keepwatch_buffer_pending_entries"); p > float64(len(want)) {
				t.Fatalf("keepwatch_buffer_pending_entries = %v with %d keys posted", p, len(want))
			}
		}
		waitMongo(t, m.DB(), want)
		// The counter moves right after the write MongoDB just showed.
		var w float64
		for deadline := time.Now().Add(30 * time.Second); w < float64(len(want)) && time.Now().Before(deadline); {
			w = metric(t, "http://"+flushAddr, "keepwatch_flush_written_total")
		}
		writes += w
		fcancel()
		if code := <-done; code != 0 {
			t.Fatalf("flush exit code %d\n%s", code, out)
		}
	}
	ratio := writes / events
	t.Logf("writes per event: %.0f MongoDB writes for %.0f events = %.3f (bound 10s/30s = 0.333)", writes, events, ratio)
	if ratio > 1.0/postsPerFlush+1e-9 {
		t.Fatalf("%.3f writes per event, want ≤ %.3f", ratio, 1.0/postsPerFlush)
	}
	cancel()
	if code := <-cmdDone; code != 0 {
		t.Fatalf("command exit code %d\n%s", code, cmdOut)
	}
}

// TestFlushRefusesUnmigratedDatabase: the flusher does not start on a
// database without migrations, and says how to fix it.
func TestFlushRefusesUnmigratedDatabase(t *testing.T) {
	r := testenv.StartRedis(t)
	m := testenv.StartMongo(t)
	code, _, errOut := runMain(t, context.Background(), map[string]string{
		"KEEPWATCH_REDIS_URL": r.URL(), "KEEPWATCH_MONGO_URI": m.URI, "KEEPWATCH_MONGO_DB": m.Database,
		"KEEPWATCH_HTTP_ADDR": "127.0.0.1:0",
	}, "flush")
	if code != 1 || !strings.Contains(errOut, "keepwatch migrate up") {
		t.Fatalf("exit code %d, want 1 with a hint to migrate:\n%s", code, errOut)
	}
}

// TestReplayCommands drives `keepwatch replay`: a dead letter the server
// still refuses stays (exit 1), after the cause is fixed `retry` applies it,
// and `discard` removes another.
func TestReplayCommands(t *testing.T) {
	ctx := context.Background()
	m := testenv.StartMongo(t)
	vars := map[string]string{"KEEPWATCH_MONGO_URI": m.URI, "KEEPWATCH_MONGO_DB": m.Database}
	store, err := mongo.Open(ctx, mongo.Options{URI: m.URI, Database: m.Database})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close(ctx)
	if err := migrations.Up(ctx, store.Database(), slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	coll := store.Database().Collection(mongo.ProgressCollection)
	if _, err := store.WriteProgress(ctx, []keepwatch.Progress{{UserID: "alice", VideoID: "x", State: keepwatch.State{EventTime: 1, Percent: 1}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := coll.Indexes().CreateOne(ctx, mgo.IndexModel{
		Keys: bson.D{{Key: "v", Value: 1}}, Options: options.Index().SetUnique(true).SetName("test_unique_v"),
	}); err != nil {
		t.Fatal(err)
	}
	bobX := keepwatch.Progress{UserID: "bob", VideoID: "x", State: keepwatch.State{EventTime: 7, Percent: 70, Position: keepwatch.Unknown, Duration: keepwatch.Unknown}}
	id, err := store.AddDeadLetter(ctx, keepwatch.DeadLetter{Entries: []keepwatch.DeadEntry{{Progress: bobX, Error: "E11000"}}, Error: "E11000", Attempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	other, err := store.AddDeadLetter(ctx, keepwatch.DeadLetter{Entries: []keepwatch.DeadEntry{{Progress: bobX}}, Error: "to discard", Attempts: 1})
	if err != nil {
		t.Fatal(err)
	}

	run := func(wantCode int, args ...string) string {
		t.Helper()
		code, out, errOut := runMain(t, ctx, vars, append([]string{"replay"}, args...)...)
		if code != wantCode {
			t.Fatalf("replay %v: exit code %d, want %d\n%s\n%s", args, code, wantCode, out, errOut)
		}
		return out + errOut
	}
	if out := run(0, "list"); !strings.Contains(out, id) || !strings.Contains(out, other) {
		t.Fatalf("list does not show both dead letters:\n%s", out)
	}
	if out := run(0, "show", id); !strings.Contains(out, "bob") || !strings.Contains(out, "E11000") {
		t.Fatalf("show:\n%s", out)
	}
	run(2, "retry")
	run(1, "show", "000000000000000000000000")
	if out := run(1, "retry", id); !strings.Contains(out, "1 still failing") {
		t.Fatalf("retry while the index is there:\n%s", out)
	}
	if err := coll.Indexes().DropOne(ctx, "test_unique_v"); err != nil {
		t.Fatal(err)
	}
	if out := run(0, "retry", id); !strings.Contains(out, "1 entries written") {
		t.Fatalf("retry after the fix:\n%s", out)
	}
	if got := percents(t, store.Database()); got["bob/x"] != 70 {
		t.Fatalf("bob/x not applied: %v", got)
	}
	run(0, "discard", other)
	if out := run(0, "list"); !strings.Contains(out, "no dead letters") {
		t.Fatalf("list after retry and discard:\n%s", out)
	}
}
