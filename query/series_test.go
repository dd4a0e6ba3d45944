package query_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keepwatch/keepwatch"
	"github.com/keepwatch/keepwatch/query"
)

// seriesIDs spells a row as video[:series]:percent, newest first.
func seriesIDs(is items) string {
	var s []string
	for _, i := range is.Items {
		if i.SeriesID != "" {
			s = append(s, fmt.Sprintf("%s[%s]:%g", i.VideoID, i.SeriesID, i.Percent))
		} else {
			s = append(s, fmt.Sprintf("%s:%g", i.VideoID, i.Percent))
		}
	}
	return strings.Join(s, " ")
}

func TestKeepWatchingShowsOneItemPerSeries(t *testing.T) {
	e := newEnv(t)
	// bb: its newest unfinished episode shows, at its own place.
	e.stored("alice", "bb1", episode(base+10, 100, "bb", 1))
	e.stored("alice", "bb2", episode(base+20, 30, "bb", 2))
	e.stored("alice", "bb3", episode(base+30, 10, "bb", 3))
	// st: a newer finished episode does not hold the series' place: the
	// unfinished one shows at its own time.
	e.stored("alice", "st1", episode(base+40, 50, "st", 1))
	e.stored("alice", "st2", episode(base+50, 99, "st", 2))
	// A film.
	e.stored("alice", "film", at(base+60, 40))
	// gone: its latest episode removed, the previous unfinished one shows.
	e.stored("alice", "gone4", episode(base+15, 20, "gone", 4))
	e.stored("alice", "gone5", deleted(base+70))
	// empty: latest removed, the other finished: nothing of it shows.
	e.stored("alice", "empty0", episode(base+5, 96, "empty", 0))
	e.stored("alice", "empty1", deleted(base+80))

	t.Run("grouped by default", func(t *testing.T) {
		got := decode[items](t, e.get("alice", "/v1/keep-watching"), 200)
		if want := "film:40 st1[st]:50 bb3[bb]:10 gone4[gone]:20"; seriesIDs(got) != want {
			t.Fatalf("got %q, want %q", seriesIDs(got), want)
		}
		first := got.Items[1]
		if first.Episode == nil || *first.Episode != 1 || first.Finished == nil || *first.Finished {
			t.Fatalf("item %+v, want episode 1 and finished false", first)
		}
		if again := decode[items](t, e.get("alice", "/v1/keep-watching?group=series"), 200); seriesIDs(again) != seriesIDs(got) {
			t.Fatalf("group=series %q, the default %q", seriesIDs(again), seriesIDs(got))
		}
	})
	t.Run("group=none lists every video", func(t *testing.T) {
		got := decode[items](t, e.get("alice", "/v1/keep-watching?group=none"), 200)
		if want := "film:40 st1[st]:50 bb3[bb]:10 bb2[bb]:30 gone4[gone]:20"; seriesIDs(got) != want {
			t.Fatalf("got %q, want %q", seriesIDs(got), want)
		}
	})
	t.Run("the limit counts series", func(t *testing.T) {
		got := decode[items](t, e.get("alice", "/v1/keep-watching?limit=3"), 200)
		if want := "film:40 st1[st]:50 bb3[bb]:10"; seriesIDs(got) != want {
			t.Fatalf("got %q, want %q", seriesIDs(got), want)
		}
	})
	t.Run("pending episodes group with stored ones", func(t *testing.T) {
		e.pend("alice", "bb4", episode(base+90, 5, "bb", 4))      // bb's newest now
		e.pend("alice", "st1", deleted(base+91))                  // st's last unfinished removed
		e.pend("alice", "gone3", episode(base+16, 70, "gone", 3)) // newer than gone4
		got := decode[items](t, e.get("alice", "/v1/keep-watching"), 200)
		if want := "bb4[bb]:5 film:40 gone3[gone]:70"; seriesIDs(got) != want {
			t.Fatalf("got %q, want %q", seriesIDs(got), want)
		}
		got = decode[items](t, e.get("alice", "/v1/keep-watching?group=none"), 200)
		if want := "bb4[bb]:5 film:40 bb3[bb]:10 bb2[bb]:30 gone3[gone]:70 gone4[gone]:20"; seriesIDs(got) != want {
			t.Fatalf("group=none: got %q, want %q", seriesIDs(got), want)
		}
	})
	t.Run("bad group", func(t *testing.T) {
		p := decode[problem](t, e.get("alice", "/v1/keep-watching?group=season"), 422)
		if len(p.Errors) != 1 || p.Errors[0].Field != "group" {
			t.Fatalf("problem %+v", p)
		}
	})
	t.Run("progress by video is per video, with the series and the verdict", func(t *testing.T) {
		got := decode[items](t, e.get("alice", "/v1/progress?video_ids=bb1,bb2,st2,gone5"), 200)
		if want := "bb1[bb]:100 bb2[bb]:30 st2[st]:99"; seriesIDs(got) != want {
			t.Fatalf("got %q, want %q", seriesIDs(got), want)
		}
		for i, want := range []bool{true, false, true} {
			if f := got.Items[i].Finished; f == nil || *f != want {
				t.Fatalf("item %s finished %v, want %v", got.Items[i].VideoID, f, want)
			}
		}
	})
}

func TestCompletionAndResumeRules(t *testing.T) {
	rules := keepwatch.Rules{FinishedPercent: 95, FinishedRemaining: 120, MinResumePercent: 2, MinResumeSeconds: 30}
	e := newEnv(t, func(s *setup) { s.cfg.Rules = rules })
	st := func(t int64, pct, pos, dur float64) keepwatch.State {
		return keepwatch.State{EventTime: t, Percent: pct, Position: pos, Duration: dur, Episode: keepwatch.Unknown}
	}
	completed := st(base+5, 40, 480, 1200)
	completed.Completed = true
	e.stored("alice", "credits", st(base+1, 91.667, 1100, 1200)) // 100 s left of a 20-minute episode
	e.stored("alice", "almost", st(base+2, 89.167, 1070, 1200))  // 130 s left
	e.stored("alice", "misclick", st(base+3, 1.5, keepwatch.Unknown, keepwatch.Unknown))
	e.stored("alice", "preview", st(base+4, 4.167, 25, 600)) // 25 s watched
	e.pend("alice", "ended", completed)                      // the player said so
	e.stored("alice", "rewatch", st(base+6, 98, 5880, 6000)) // finished...
	e.pend("alice", "rewatch", st(base+7, 0.167, 10, 6000))  // ...watched again from the start
	row := func() string { return ids(decode[items](t, e.get("alice", "/v1/keep-watching"), 200)) }
	if got, want := row(), "almost:89.167"; got != want {
		t.Fatalf("row %q, want %q: finished by seconds left, by the player, by percent; too short by percent and seconds", got, want)
	}
	e.pend("alice", "rewatch", st(base+8, 2.5, 150, 6000))
	if got, want := row(), "rewatch:2.5 almost:89.167"; got != want {
		t.Fatalf("row %q, want %q: a finished video watched again past the minimum comes back", got, want)
	}
	got := decode[items](t, e.get("alice", "/v1/progress?video_ids=credits,almost,ended,misclick"), 200)
	var verdicts []string
	for _, i := range got.Items {
		verdicts = append(verdicts, fmt.Sprintf("%s:%v", i.VideoID, *i.Finished))
	}
	if want := "credits:true almost:false ended:true misclick:false"; strings.Join(verdicts, " ") != want {
		t.Fatalf("verdicts %q, want %q", strings.Join(verdicts, " "), want)
	}
}

func TestKeepWatchingMaxAge(t *testing.T) {
	now := time.UnixMilli(base).Add(200 * 24 * time.Hour)
	e := newEnv(t, func(s *setup) {
		s.cfg.MaxAge = 180 * 24 * time.Hour
		s.cfg.Now = func() time.Time { return now }
	})
	ms := func(ago time.Duration) int64 { return now.Add(-ago).UnixMilli() }
	e.stored("alice", "abandoned", at(ms(181*24*time.Hour), 30))
	e.stored("alice", "edge", at(ms(180*24*time.Hour), 30))
	e.stored("alice", "recent", at(ms(time.Hour), 30))
	e.pend("alice", "old-pending", at(ms(190*24*time.Hour), 30))
	if got, want := ids(decode[items](t, e.get("alice", "/v1/keep-watching"), 200)), "recent:30 edge:30"; got != want {
		t.Fatalf("row %q, want %q", got, want)
	}
	// A progress bar still shows it until retention removes it.
	if got := decode[items](t, e.get("alice", "/v1/progress?video_ids=abandoned"), 200); ids(got) != "abandoned:30" {
		t.Fatalf("progress of an abandoned video: %q", ids(got))
	}
}

// rowReads sums the keep-watching answers' documents read and counts the
// answers.
func rowReads(t *testing.T, e *env) (sum float64, answers uint64) {
	t.Helper()
	fams, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == "keepwatch_query_row_documents_read" {
			h := f.GetMetric()[0].GetHistogram()
			return h.GetSampleSum(), h.GetSampleCount()
		}
	}
	t.Fatal("no keepwatch_query_row_documents_read")
	return 0, 0
}

// TestRowReadsTheRowNotTheHistory guards what makes grouping cheap: the
// documents read for a row are those it shows or skips, never the user's
// whole history. 500 finished episodes (the history) and three shows in
// progress, one of them with two unfinished episodes.
func TestRowReadsTheRowNotTheHistory(t *testing.T) {
	e := newEnv(t)
	for i := range 500 {
		e.stored("alice", fmt.Sprintf("old%03d", i), episode(base+int64(i), 100, "old", float64(i)))
	}
	e.stored("alice", "a1", episode(base+1000, 30, "a", 1))
	e.stored("alice", "b1", episode(base+1001, 30, "b", 1))
	e.stored("alice", "c1", episode(base+1002, 30, "c", 1))
	e.stored("alice", "a2", episode(base+1003, 30, "a", 2))
	for _, tc := range []struct {
		path    string
		want    string
		maxRead float64
	}{
		// The row is not full: every candidate is read, and only those:
		// three shown, one skipped (a's older episode).
		{"/v1/keep-watching", "a2:30 c1:30 b1:30", 4},
		// Full after the first: what was read is the first and at most
		// the rest of its batch (limit + 1).
		{"/v1/keep-watching?limit=1", "a2:30", 2},
	} {
		sum0, n0 := rowReads(t, e)
		if got := ids(decode[items](t, e.get("alice", tc.path), 200)); got != tc.want {
			t.Fatalf("%s: %q, want %q", tc.path, got, tc.want)
		}
		sum, n := rowReads(t, e)
		if n != n0+1 || sum-sum0 < 1 || sum-sum0 > tc.maxRead {
			t.Fatalf("%s read %v documents, want 1 to %v of the user's 504", tc.path, sum-sum0, tc.maxRead)
		}
	}
}

func TestErasureHidesEverythingOlder(t *testing.T) {
	e := newEnv(t)
	e.stored("alice", "old", at(base+10, 30))
	e.stored("alice", "kept", at(base+30, 30))
	e.stored("bob", "old", at(base+10, 30))
	// The erase is recorded in Redis; MongoDB still holds the old video
	// until the flusher applies it.
	if _, err := e.buf.Erase(context.Background(), "alice", base+20); err != nil {
		t.Fatal(err)
	}
	check := func(t *testing.T) {
		t.Helper()
		if got := ids(decode[items](t, e.get("alice", "/v1/keep-watching"), 200)); got != "kept:30" {
			t.Fatalf("row %q, want kept alone", got)
		}
		if got := ids(decode[items](t, e.get("alice", "/v1/progress?video_ids=old,kept"), 200)); got != "kept:30" {
			t.Fatalf("progress %q, want kept alone", got)
		}
		decode[problem](t, e.get("alice", "/v1/progress/old"), 404)
		if got := ids(decode[items](t, e.get("bob", "/v1/keep-watching"), 200)); got != "old:30" {
			t.Fatalf("bob's row %q: another user's erase touched it", got)
		}
	}
	t.Run("pending in Redis", check)
	// Flushed: the tombstone is in MongoDB and the erase has left Redis. A
	// late retry of old progress gets into Redis again, and still hides.
	if _, err := e.store.EraseUser(context.Background(), "alice", base+20); err != nil {
		t.Fatal(err)
	}
	if err := e.buf.EraseDone(context.Background(), "alice", base+20); err != nil {
		t.Fatal(err)
	}
	e.pend("alice", "old", at(base+15, 60))
	t.Run("tombstone in MongoDB", check)
}

// exportLine is any NDJSON line of an export.
type exportLine struct {
	Record       string   `json:"record"`
	Source       string   `json:"source"`
	UserID       string   `json:"user_id"`
	Sources      []string `json:"sources"`
	VideoID      string   `json:"video_id"`
	SeriesID     string   `json:"series_id"`
	Percent      float64  `json:"percent"`
	Completed    bool     `json:"completed"`
	Finished     bool     `json:"finished"`
	DeadLetterID string   `json:"dead_letter_id"`
	Error        string   `json:"error"`
	ErasedAt     string   `json:"erased_at"`
	Records      int      `json:"records"`
}

func exportOf(t *testing.T, e *env, user string) []exportLine {
	t.Helper()
	resp := e.get(user, "/v1/export")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("export: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var out []exportLine
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var l exportLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, l)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func spell(ls []exportLine) string {
	var s []string
	for _, l := range ls {
		switch l.Record {
		case "export":
			s = append(s, "export:"+l.UserID+":"+strings.Join(l.Sources, "+"))
		case "progress", "removal":
			x := l.Record + ":" + l.Source + ":" + l.VideoID
			if l.DeadLetterID != "" {
				x += ":" + l.Error
			}
			s = append(s, x)
		case "erasure":
			s = append(s, "erasure:"+l.Source+":"+l.ErasedAt)
		case "end":
			s = append(s, fmt.Sprintf("end:%d", l.Records))
		default:
			s = append(s, "?"+l.Record)
		}
	}
	return strings.Join(s, " ")
}

func TestExport(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	fin := episode(base+30, 100, "s", 1)
	fin.Completed = true
	e.stored("alice", "watching", episode(base+40, 30, "s", 2))
	e.stored("alice", "finished", fin)
	e.stored("alice", "removed", deleted(base+35))
	e.stored("alice", "erased", at(base+5, 30))
	e.stored("bob", "bobs", at(base+40, 30))
	e.pend("alice", "pending", at(base+50, 10))
	if _, err := e.store.AddDeadLetter(ctx, keepwatch.DeadLetter{Error: "refused", Entries: []keepwatch.DeadEntry{
		{Progress: keepwatch.Progress{UserID: "alice", VideoID: "dead", State: at(base+45, 20)}, Error: "E121 \"validation\""},
		{Progress: keepwatch.Progress{UserID: "bob", VideoID: "bobs-dead", State: at(base+45, 20)}},
	}}); err != nil {
		t.Fatal(err)
	}
	// An erase still pending in Redis: the video it covers in MongoDB is
	// not exported, as no read shows it.
	if _, err := e.buf.Erase(ctx, "alice", base+10); err != nil {
		t.Fatal(err)
	}
	lines := exportOf(t, e, "alice")
	want := "export:alice:mongodb+dead_letter+buffer progress:mongodb:watching removal:mongodb:removed progress:mongodb:finished " +
		"progress:buffer:pending progress:dead_letter:dead:E121 \"validation\" erasure:buffer:2024-11-22T01:46:40.010Z end:7"
	if got := spell(lines); got != want {
		t.Fatalf("export\n got %s\nwant %s", got, want)
	}
	if l := lines[3]; !l.Finished || !l.Completed || l.SeriesID != "s" {
		t.Fatalf("the finished line %+v: want finished, completed and its series", l)
	}
	if got := spell(exportOf(t, e, "carol")); got != "export:carol:mongodb+dead_letter+buffer end:1" {
		t.Fatalf("an unknown user's export: %s", got)
	}
}

// TestExportNeedsTheStores checks that an export that cannot be complete is
// refused before its first byte.
func TestExportNeedsTheStores(t *testing.T) {
	e := newEnv(t)
	e.stored("alice", "a", at(base+1, 10))
	e.redis.Stop()
	p := decode[problem](t, e.get("alice", "/v1/export"), 503)
	if !strings.Contains(p.Type, "unavailable") {
		t.Fatalf("problem %+v", p)
	}
	_ = query.OverlayHeader
}
