package keepwatch_test

import (
	"math"
	"testing"

	"github.com/keepwatch/keepwatch"
)

// FuzzEncodingIsCanonical guards what the buffer's release relies on: a
// stored value is compared with the claimed state encoded again, so decoding
// an encoding and encoding it again must give the same bytes, and keep the
// order of Compare.
func FuzzEncodingIsCanonical(f *testing.F) {
	f.Add(int64(1732240000000), uint8(0), 42.5, 1234.5, 2700.0, int64(1732240000001), uint8(1), 42.5, -1.0, -1.0)
	f.Add(int64(0), uint8(0), 0.0, 0.0, 0.0, int64(0), uint8(0), 100.0, keepwatch.MaxSeconds, keepwatch.MaxSeconds)
	f.Add(int64(9999999999999), uint8(1), 99.9995, 0.0004, 12.3456, int64(5), uint8(0), 0.001, 0.0005, 1e-9)
	f.Fuzz(func(t *testing.T, t1 int64, k1 uint8, p1, pos1, d1 float64, t2 int64, k2 uint8, p2, pos2, d2 float64) {
		a, okA := validState(t1, k1, p1, pos1, d1)
		b, okB := validState(t2, k2, p2, pos2, d2)
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
func validState(t int64, k uint8, p, pos, d float64) (keepwatch.State, bool) {
	if t < 0 || t > 9_999_999_999_999 || math.IsNaN(p) || !keepwatch.ValidPercent(p) {
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
	if !ok1 || !ok2 {
		return keepwatch.State{}, false
	}
	return keepwatch.State{EventTime: t, Kind: keepwatch.Kind(k % 2), Percent: keepwatch.Round3(p), Position: pos, Duration: d}, true
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
