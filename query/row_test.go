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
// states offered newest first, grouping, filtering by the rules, encoding
// the JSON and hashing the ETag.
func BenchmarkKeepWatchingRow(b *testing.B) {
	stored := make([]keepwatch.Progress, 50)
	for i := range stored {
		stored[i] = keepwatch.Progress{UserID: "alice", VideoID: fmt.Sprintf("video-%02d", i),
			State: keepwatch.State{EventTime: 1_732_240_000_000 - int64(i)*60_000, Percent: float64(i), Position: float64(i) * 10, Duration: 2700, Episode: keepwatch.Unknown}}
		if i%5 == 0 {
			stored[i].SeriesID, stored[i].Episode = "series-"+strconv.Itoa(i%3), float64(i)
		}
	}
	pending := []keepwatch.Progress{
		{UserID: "alice", VideoID: "video-10", State: keepwatch.State{EventTime: 1_732_250_000_000, Percent: 55, Position: 1500, Duration: 2700, Episode: -1}},
		{UserID: "alice", VideoID: "video-20", State: keepwatch.State{EventTime: 1_732_250_000_001, Kind: keepwatch.KindDeleted, Position: -1, Duration: -1, Episode: -1}},
		{UserID: "alice", VideoID: "brand-new", State: keepwatch.State{EventTime: 1_732_250_000_002, Percent: 1, Position: -1, Duration: -1, Episode: -1}},
	}
	s := &Server{reader: &reader{rules: keepwatch.DefaultRules()}}
	work := make([]keepwatch.Progress, 0, 64)
	b.ReportAllocs()
	for b.Loop() {
		// The store returns the pending videos' stored states.
		work = append(work[:0], stored[10], stored[20])
		merged, erase, _ := overlay(work, pending)
		m := newRowMerger(newRow(s.reader.rules, erase, 20, true), merged, videoIDs(pending))
		for _, p := range stored {
			if !m.offer(p) {
				break
			}
		}
		items := m.finish()
		body := s.appendItems(make([]byte, 0, 64+len(items)*itemSize), items)
		if xxhash.Sum64(body) == 0 || len(body) == 0 {
			b.Fatal("empty body")
		}
	}
}

func TestRowMerger(t *testing.T) {
	p := func(v string, t int64, pct float64, series string) keepwatch.Progress {
		return keepwatch.Progress{VideoID: v, State: keepwatch.State{EventTime: t, Percent: pct, Position: -1, Duration: -1, Episode: -1, SeriesID: series}}
	}
	// MongoDB's candidates, newest first; the stored states of the pending
	// videos; the pending entries.
	stream := []keepwatch.Progress{p("a", 9, 10, "s"), p("b", 8, 10, "s"), p("c", 7, 10, ""), p("d", 5, 10, "t"), p("e", 3, 10, "")}
	stored := []keepwatch.Progress{p("c", 7, 10, ""), p("d", 5, 10, "t")}
	pending := []keepwatch.Progress{p("c", 6, 20, ""), p("d", 10, 99, "t"), p("x", 4, 1, "t"), {VideoID: "", State: keepwatch.EraseState(3)}}
	for _, tc := range []struct {
		name    string
		limit   int
		group   bool
		want    []string
		offered int
	}{
		{"grouped", 10, true, []string{"a:10", "c:10", "x:1"}, 5},
		{"flat", 10, false, []string{"a:10", "b:10", "c:10", "x:1"}, 5},
		{"stops when full", 1, true, []string{"a:10"}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			merged, erase, hit := overlay(slices.Clone(stored), pending)
			if erase != 3 || !hit {
				t.Fatalf("erase %d, hit %v; want 3 and a hit", erase, hit)
			}
			m := newRowMerger(newRow(keepwatch.DefaultRules(), erase, tc.limit, tc.group), merged, videoIDs(pending))
			offered := 0
			for _, s := range stream {
				offered++
				if !m.offer(s) {
					break
				}
			}
			var got []string
			for _, i := range m.finish() {
				got = append(got, fmt.Sprintf("%s:%g", i.VideoID, i.Percent))
			}
			// c's pending entry is older than its stored state; d is
			// finished by its pending entry, so x holds t's place; e is
			// erased.
			if !slices.Equal(got, tc.want) || offered != tc.offered {
				t.Fatalf("got %v after %d offers, want %v after %d", got, offered, tc.want, tc.offered)
			}
		})
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
