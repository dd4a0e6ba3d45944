package command_test

import (
	"context"
	"net/http"
	"sync"
	"testing"

	dto "github.com/prometheus/client_model/go"
)

// histogram returns the one histogram named name from the env's registry.
func (e *env) histogram(name string) *dto.Histogram {
	e.t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetHistogram()
		}
	}
	e.t.Fatalf("no histogram %s", name)
	return nil
}

// TestGroupCommitSharesRoundTrips posts from many goroutines at once: every
// request is acknowledged only once stored, and round trips carried several
// requests each. It asserts on the batch-size histogram, not on time.
func TestGroupCommitSharesRoundTrips(t *testing.T) {
	const requests = 200
	e := newEnv(t, func(s *setup) {
		s.cfg.Commit.Workers = 2
		s.cfg.Commit.Window = 0
		s.cfg.Commit.MaxBatch = 256
	})
	// Hold writes in Redis for a moment so that requests arriving meanwhile
	// queue behind the first round trip. This makes shared round trips
	// certain rather than likely; the assertions do not depend on it.
	if err := e.redis.Client().Do(context.Background(), "CLIENT", "PAUSE", 300, "WRITE").Err(); err != nil {
		t.Fatal(err)
	}
	users := make([]string, requests)
	tokens := make([]string, requests)
	for i := range users {
		users[i] = e.user("gc")
		tokens[i] = "Bearer " + token(t, users[i])
	}
	var wg sync.WaitGroup
	answers := make([]resp, requests)
	errs := make([]error, requests)
	for i := range requests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i], errs[i] = e.try(req{path: "/v1/progress", body: `{"video_id":"v","percent":` + itoa(int64(i%100)) + `}`, auth: tokens[i]})
		}()
	}
	wg.Wait()
	for i, r := range answers {
		if errs[i] != nil || r.status != http.StatusAccepted {
			t.Fatalf("request %d: %v, status %d %s", i, errs[i], r.status, r.body)
		}
	}
	// Every acknowledged request is stored.
	for i, u := range users {
		got := e.pending(u)
		if len(got) != 1 || got["v"].Percent != float64(i%100) {
			t.Fatalf("user %s: stored %v", u, got)
		}
	}
	if n := e.total(); n != requests {
		t.Fatalf("%d pending entries, want %d", n, requests)
	}
	h := e.histogram("keepwatch_commit_batch_size")
	if h.GetSampleSum() != requests {
		t.Fatalf("round trips carried %v requests, want %d", h.GetSampleSum(), requests)
	}
	if n := h.GetSampleCount(); n >= requests || n == 0 {
		t.Fatalf("%d round trips for %d requests: none was shared", n, requests)
	}
	t.Logf("%d requests in %d round trips", requests, h.GetSampleCount())
}
