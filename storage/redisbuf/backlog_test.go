package redisbuf_test

import (
	"log/slog"
	"maps"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/keepwatch/keepwatch/internal/testenv"
	"github.com/keepwatch/keepwatch/storage/redisbuf"
)

// TestBacklogCollectorReadsRedisAtScrape: the backlog gauges show what Redis
// holds at the moment of the scrape, and are left out (not frozen at an old
// value, not failing the scrape) while Redis is down.
func TestBacklogCollectorReadsRedisAtScrape(t *testing.T) {
	r := testenv.StartRedis(t)
	now := time.UnixMilli(1_800_000_000_000)
	b := newBuffer(t, r.Client(), redisbuf.Options{Shards: 4, Now: func() time.Time { return now }})
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(b.BacklogCollector(time.Second, slog.New(slog.DiscardHandler)))

	// want checks the two gauges' values; none means both absent.
	want := func(values ...float64) {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatalf("scrape: %v", err)
		}
		got := map[string]float64{}
		for _, mf := range mfs {
			if mf.GetType() != dto.MetricType_GAUGE || len(mf.GetMetric()) != 1 {
				t.Fatalf("%s: %v with %d series, want one gauge", mf.GetName(), mf.GetType(), len(mf.GetMetric()))
			}
			got[mf.GetName()] = mf.GetMetric()[0].GetGauge().GetValue()
		}
		exp := map[string]float64{}
		if len(values) > 0 {
			exp["keepwatch_buffer_pending_entries"] = values[0]
			exp["keepwatch_buffer_oldest_pending_age_seconds"] = values[1]
		}
		if !maps.Equal(got, exp) {
			t.Fatalf("scraped %v, want %v", got, exp)
		}
	}
	want(0, 0)
	apply(t, b, "alice", redisbuf.Entry{VideoID: "a", State: st(1, 1)}, redisbuf.Entry{VideoID: "b", State: st(1, 1)})
	now = now.Add(1500 * time.Millisecond)
	apply(t, b, "bob", redisbuf.Entry{VideoID: "a", State: st(1, 1)})
	now = now.Add(time.Second)
	want(3, 2.5)

	r.Stop()
	want()
	r.Start()
	want(0, 0) // a restarted test server keeps no data
}
