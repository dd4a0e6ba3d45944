package fleet

import (
	"context"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
)

func TestScheduleSpacing(t *testing.T) {
	tests := []struct {
		rate        float64
		period      time.Duration
		wantPlayers int
	}{
		{rate: 100, period: 10 * time.Second, wantPlayers: 1000},
		{rate: 1000, period: 2 * time.Second, wantPlayers: 2000},
		{rate: 0.5, period: time.Second, wantPlayers: 1},
	}
	for _, tt := range tests {
		s := NewSchedule(tt.rate, tt.period)
		if s.Players != tt.wantPlayers {
			t.Errorf("NewSchedule(%v, %v).Players = %d, want %d", tt.rate, tt.period, s.Players, tt.wantPlayers)
		}
		step := time.Duration(float64(time.Second) / tt.rate)
		for n := int64(0); n < 3*int64(s.Players); n++ {
			if got, want := s.Due(n), time.Duration(n)*step; got-want > time.Microsecond || want-got > time.Microsecond {
				t.Fatalf("rate %v: Due(%d) = %v, want %v", tt.rate, n, got, want)
			}
			p, tick := s.Player(n)
			if p != int(n%int64(s.Players)) || tick != n/int64(s.Players) {
				t.Fatalf("Player(%d) = %d, %d", n, p, tick)
			}
			// Every slot due at its own time is counted by DueBy.
			if s.DueBy(s.Due(n)) < n+1 {
				t.Fatalf("DueBy(Due(%d)) = %d, want ≥ %d", n, s.DueBy(s.Due(n)), n+1)
			}
		}
		if s.Players > 1 {
			if got := s.Due(int64(s.Players)) - s.Due(0); got != s.Period() {
				t.Errorf("one player's slots are %v apart, want its period %v", got, s.Period())
			}
		}
	}
}

// postOnly is a fleet that only posts, so every slot is one request.
func postOnly() Behaviour {
	return Behaviour{Videos: 10, WatchStep: 10 * time.Second}
}

// TestRunIsOpenModel proves requests go out on schedule while earlier ones
// are still unanswered: the server holds the first `hold` requests until
// the last of them arrives. A closed-loop client (send, wait, send) would
// never get there and time out; the open model completes with no error,
// and the first request's latency, taken from its scheduled time, includes
// the wait for the others' scheduled times.
func TestRunIsOpenModel(t *testing.T) {
	const hold = 8
	var mu sync.Mutex
	seen := 0
	gate := make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen++
		if seen == hold {
			close(gate)
		}
		n := seen
		mu.Unlock()
		if n <= hold {
			select {
			case <-gate:
			case <-time.After(20 * time.Second): // bound: fail rather than hang
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
		}
		w.WriteHeader(http.StatusAccepted)
	})}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })

	rate := 50.0
	cfg := Config{Target: Target{Name: "gate", CommandURL: "http://" + l.Addr().String()},
		Rate: rate, Period: time.Second, Duration: time.Second, Workers: hold + 4, Timeout: 30 * time.Second}
	r, err := Run(context.Background(), NewFleet("s", postOnly()), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if r.ErrorsTotal != 0 {
		t.Fatalf("errors %v: requests were not sent while earlier ones were outstanding", r.Errors)
	}
	if r.OK != NewSchedule(rate, time.Second).Slots(time.Second) {
		t.Errorf("ok = %d, want every slot (%d)", r.OK, NewSchedule(rate, time.Second).Slots(time.Second))
	}
	// The first request waited at least until the hold-th was scheduled.
	minWait := NewSchedule(rate, time.Second).Due(hold - 1)
	if got := time.Duration(r.Latency.MaxMS * float64(time.Millisecond)); got < minWait-time.Millisecond {
		t.Errorf("max latency %v, want ≥ %v (latency must be measured from the scheduled time)", got, minWait)
	}
}
