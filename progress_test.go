package keepwatch_test

import (
	"math"
	"strings"
	"testing"

	"github.com/keepwatch/keepwatch"
)

// FuzzEncodingIsCanonical guards what the buffer's release relies on: a
// stored value is compared with the claimed state encoded again, so decoding
// an encoding and encoding it again must give the same bytes, and keep the
// order of Compare.
func FuzzEncodingIsCanonical(f *testing.F) {
	f.Add(int64(1732240000000), uint8(0), 42.5, 1234.5, 2700.0, false, -1.0, "", int64(1732240000001), uint8(1), 42.5, -1.0, -1.0, false, -1.0, "")
	f.Add(int64(0), uint8(0), 0.0, 0.0, 0.0, false, -1.0, "", int64(0), uint8(0), 100.0, keepwatch.MaxSeconds, keepwatch.MaxSeconds, true, keepwatch.MaxSeconds, "s")
	f.Add(int64(9999999999999), uint8(1), 99.9995, 0.0004, 12.3456, false, 0.0, "", int64(5), uint8(0), 0.001, 0.0005, 1e-9, false, -1.0, "tt0903747")
	f.Add(int64(7), uint8(2), 0.0, -1.0, -1.0, false, -1.0, "", int64(7), uint8(0), 0.0, -1.0, -1.0, false, -1.0, "a")
	f.Add(int64(7), uint8(0), 1.0, 2.0, 3.0, false, 2.0, "a", int64(7), uint8(0), 1.0, 2.0, 3.0, false, 1.0, "b")
	f.Add(int64(7), uint8(0), 1.0, 2.0, 3.0, false, -1.0, "ab", int64(7), uint8(0), 1.0, 2.0, 3.0, false, -1.0, "a")
	f.Fuzz(func(t *testing.T, t1 int64, k1 uint8, p1, pos1, d1 float64, c1 bool, e1 float64, s1 string,
		t2 int64, k2 uint8, p2, pos2, d2 float64, c2 bool, e2 float64, s2 string) {
		a, okA := validState(t1, k1, p1, pos1, d1, c1, e1, s1)
		b, okB := validState(t2, k2, p2, pos2, d2, c2, e2, s2)
		if !okA || !okB {
			return
		}
		for _, s := range []keepwatch.State{a, b} {
			enc := s.Encode()
			dec, err := keepwatch.DecodeState(enc)
			if err != nil {
				t.Fatalf("decode %q: %v", enc, err)
			}
			if again := dec.Encode(); again != enc {
				t.Fatalf("%+v encodes to %q, decodes to %+v, which encodes to %q", s, enc, dec, again)
			}
		}
		ea, eb := a.Encode(), b.Encode()
		da, _ := keepwatch.DecodeState(ea)
		db, _ := keepwatch.DecodeState(eb)
		if got, want := cmpStrings(ea, eb), da.Compare(db); got != want {
			t.Fatalf("%q vs %q compare %d as bytes and %d as states", ea, eb, got, want)
		}
	})
}

// validState makes a state within what validation lets through, rounded as
// every store keeps it.
func validState(t int64, k uint8, p, pos, d float64, c bool, e float64, series string) (keepwatch.State, bool) {
	if t < 0 || t > 9_999_999_999_999 || math.IsNaN(p) || !keepwatch.ValidPercent(p) {
		return keepwatch.State{}, false
	}
	if series != "" && !keepwatch.ValidVideoID([]byte(series)) {
		return keepwatch.State{}, false
	}
	secs := func(v float64) (float64, bool) {
		if v == keepwatch.Unknown {
			return v, true
		}
		return keepwatch.Round3(v), keepwatch.ValidSeconds(v)
	}
	pos, ok1 := secs(pos)
	d, ok2 := secs(d)
	e, ok3 := secs(e)
	if !ok1 || !ok2 || !ok3 {
		return keepwatch.State{}, false
	}
	return keepwatch.State{EventTime: t, Kind: keepwatch.Kind(k % 3), Percent: keepwatch.Round3(p), Position: pos, Duration: d,
		Completed: c, Episode: e, SeriesID: series}, true
}

// TestEncodingsOfEarlierBuildsStillDecodeAndOrder guards an upgrade: entries
// the previous release buffered in Redis are the 49-byte head alone. They
// must decode to the same state with completed, episode and series unset,
// encode again to the same bytes (the release compares them), and order
// against the new encodings as Compare orders their states.
func TestEncodingsOfEarlierBuildsStillDecodeAndOrder(t *testing.T) {
	// Written by the previous release's AppendEncode.
	old := []string{
		"1732240000000|0|042.500|00001234.500|00002700.000",
		"1732240000000|1|000.000|-0000001.000|-0000001.000",
		"1732240000001|0|000.000|-0000001.000|00000010.000",
	}
	var states []keepwatch.State
	for _, v := range old {
		st, err := keepwatch.DecodeState(v)
		if err != nil {
			t.Fatalf("decode %q: %v", v, err)
		}
		if st.Completed || st.Episode != keepwatch.Unknown || st.SeriesID != "" {
			t.Fatalf("%q decodes to %+v: the new fields must be unset", v, st)
		}
		if again := st.Encode(); again != v {
			t.Fatalf("%q encodes again to %q", v, again)
		}
		states = append(states, st)
	}
	// The same heads with each new field set, and the erase kind.
	for _, base := range append([]keepwatch.State(nil), states...) {
		for _, mod := range []func(*keepwatch.State){
			func(s *keepwatch.State) { s.Completed = true },
			func(s *keepwatch.State) { s.Episode = 0 },
			func(s *keepwatch.State) { s.Episode = 3 },
			func(s *keepwatch.State) { s.SeriesID = "a" },
			func(s *keepwatch.State) { s.SeriesID = "tt0903747"; s.Episode = 2 },
			func(s *keepwatch.State) { s.Kind = keepwatch.KindErased },
		} {
			s := base
			mod(&s)
			states = append(states, s)
		}
	}
	for _, a := range states {
		for _, b := range states {
			ea, eb := a.Encode(), b.Encode()
			if got, want := cmpStrings(ea, eb), a.Compare(b); got != want {
				t.Errorf("%q vs %q compare %d as bytes and %d as states", ea, eb, got, want)
			}
		}
	}
}

func TestDecodeStateRefusesNonCanonical(t *testing.T) {
	head := "1732240000000|0|042.500|00001234.500|00002700.000"
	for _, v := range []string{
		head[:48],
		head + "|0|-0000001.000|",           // a tail of unset fields: the canonical form has none
		head + "|2|-0000001.000|s",          // completed is 0 or 1
		head + "|0|-0000001.000|bad series", // not a video id
		head + "|0|-0000001.000",            // short tail
		strings.Replace(head, "|0|", "|3|", 1),
	} {
		if st, err := keepwatch.DecodeState(v); err == nil {
			t.Errorf("%q decodes to %+v, want an error", v, st)
		}
	}
}

func TestRules(t *testing.T) {
	st := func(pct, pos, dur float64) keepwatch.State {
		return keepwatch.State{Percent: pct, Position: pos, Duration: dur, Episode: keepwatch.Unknown}
	}
	completed := st(40, 100, 250)
	completed.Completed = true
	credits := keepwatch.Rules{FinishedPercent: 95, FinishedRemaining: 120}
	short := keepwatch.Rules{FinishedPercent: 95, MinResumePercent: 2, MinResumeSeconds: 30}
	tests := []struct {
		name               string
		rules              keepwatch.Rules
		st                 keepwatch.State
		finished, tooShort bool
	}{
		{"below the percent", keepwatch.DefaultRules(), st(94.999, -1, -1), false, false},
		{"at the percent", keepwatch.DefaultRules(), st(95, -1, -1), true, false},
		{"the player said completed", keepwatch.DefaultRules(), completed, true, false},
		{"credits: 119 s left of a film", credits, st(98.5, 7881, 8000), true, false},
		{"credits: 121 s left", credits, st(90, 7879, 8000), false, false},
		{"credits from the percent without a position", credits, st(99, -1, 8000), true, false},
		{"credits need the duration", credits, st(90, 7990, -1), false, false},
		{"min percent", short, st(1.999, -1, -1), false, true},
		{"min seconds from the position", short, st(50, 29.999, 60), false, true},
		{"min seconds from the percent", short, st(10, -1, 200), false, true},
		{"min seconds unknown without position or duration", short, st(10, -1, -1), false, false},
		{"watched long enough", short, st(10, 31, 310), false, false},
		{"rules off", keepwatch.Rules{FinishedPercent: 95}, st(0, 0, 8000), false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.rules.Finished(tc.st); got != tc.finished {
				t.Errorf("Finished = %v, want %v", got, tc.finished)
			}
			if got := tc.rules.TooShort(tc.st); got != tc.tooShort {
				t.Errorf("TooShort = %v, want %v", got, tc.tooShort)
			}
			if got, want := tc.rules.InRow(tc.st), !tc.finished && !tc.tooShort; got != want {
				t.Errorf("InRow = %v, want %v", got, want)
			}
		})
	}
	removed := st(10, -1, -1)
	removed.Kind = keepwatch.KindDeleted
	if keepwatch.DefaultRules().InRow(removed) {
		t.Error("a removal is in the row")
	}
}

func cmpStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
