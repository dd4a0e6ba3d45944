package query

import (
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/keepwatch/keepwatch"
)

// BenchmarkKeepWatchingRow is keepwatch's own share of a keep-watching
// answer, without the servers: merging 3 pending entries into 50 stored
// states, filtering, sorting, encoding the JSON and hashing the ETag.
func BenchmarkKeepWatchingRow(b *testing.B) {
	stored := make([]keepwatch.Progress, 50)
	for i := range stored {
		stored[i] = keepwatch.Progress{UserID: "alice", VideoID: fmt.Sprintf("video-%02d", i),
			State: keepwatch.State{EventTime: 1_732_240_000_000 - int64(i)*60_000, Percent: float64(i), Position: float64(i) * 10, Duration: 2700}}
	}
	pending := []keepwatch.Progress{
		{UserID: "alice", VideoID: "video-10", State: keepwatch.State{EventTime: 1_732_250_000_000, Percent: 55, Position: 1500, Duration: 2700}},
		{UserID: "alice", VideoID: "video-20", State: keepwatch.State{EventTime: 1_732_250_000_001, Kind: keepwatch.KindDeleted, Position: -1, Duration: -1}},
		{UserID: "alice", VideoID: "brand-new", State: keepwatch.State{EventTime: 1_732_250_000_002, Percent: 1, Position: -1, Duration: -1}},
	}
	work := make([]keepwatch.Progress, 0, 64)
	b.ReportAllocs()
	for b.Loop() {
		// The store returns a fresh slice each time.
		work = append(work[:0], stored...)
		items, _ := keepWatchingRow(work, pending, 95, 20)
		body := appendItems(make([]byte, 0, 64+len(items)*itemSize), items)
		if xxhash.Sum64(body) == 0 || len(body) == 0 {
			b.Fatal("empty body")
		}
	}
}

func TestKeepWatchingRow(t *testing.T) {
	p := func(v string, t int64, pct float64) keepwatch.Progress {
		return keepwatch.Progress{VideoID: v, State: keepwatch.State{EventTime: t, Percent: pct, Position: -1, Duration: -1}}
	}
	stored := []keepwatch.Progress{p("a", 5, 10), p("b", 4, 10), p("c", 3, 10)}
	pending := []keepwatch.Progress{p("c", 9, 20), p("b", 1, 50), p("d", 2, 10)}
	items, hit := keepWatchingRow(slices.Clone(stored), pending, 95, 3)
	var got []string
	for _, i := range items {
		got = append(got, fmt.Sprintf("%s:%g", i.VideoID, i.Percent))
	}
	if want := []string{"c:20", "a:10", "b:10"}; !hit || !slices.Equal(got, want) {
		t.Fatalf("got %v (hit %v), want %v", got, hit, want)
	}
	if _, hit := keepWatchingRow(slices.Clone(stored), []keepwatch.Progress{p("a", 1, 99)}, 95, 3); hit {
		t.Fatal("an older pending entry counted as a hit")
	}
}

func TestAppendNumbers(t *testing.T) {
	for _, v := range []float64{0, 0.001, 0.01, 0.1, 0.5, 1, 42.5, 94.999, 95, 100, 1147.125, 2700, 99_999_999.999, 12.34} {
		if got, want := string(appendMillis(nil, v)), strconv.FormatFloat(v, 'f', -1, 64); got != want {
			t.Errorf("appendMillis(%v) = %s, want %s", v, got, want)
		}
	}
	for _, ms := range []int64{0, 1, 999, 1_732_240_000_000, 1_732_240_003_007, 9_999_999_999_999, 951_782_400_123} {
		if got, want := string(appendTime(nil, ms)), time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05.000Z07:00"); got != want {
			t.Errorf("appendTime(%d) = %s, want %s", ms, got, want)
		}
	}
}
