package command

import (
	"math"
	"math/big"
	"strconv"
	"testing"
)

// TestFieldRulesAreExact checks the rules on numbers a float64 cannot tell
// from the bounds, as a JSON Schema validator (exact decimals) reads them.
func TestFieldRulesAreExact(t *testing.T) {
	for _, tc := range []struct {
		tok      string
		percent  bool
		position bool
		duration bool
		millis   bool
	}{
		{"0", true, true, false, true},
		{"-0", true, true, false, true},
		{"-0.000e+5", true, true, false, true},
		{"-1e-400", false, false, false, false}, // parses to -0, but is below 0
		{"1e-400", true, true, false, false},
		{"-0.0004", false, false, false, false}, // rounds to -0: still below 0
		{"100", true, true, true, true},
		{"1e2", true, true, true, true},
		{"100.0", true, true, true, true},
		{"100.00000000000000001", false, true, true, false}, // parses to 100
		{"99.999999999999999999", true, true, true, false},  // parses to 100
		{"0.001", true, true, true, false},
		{"0.00099999999999999999", true, true, false, false}, // parses to 0.001
		{"0.0005", true, true, false, false},
		{"99999999.999", false, true, true, false},
		{"99999999.9990000001", false, false, false, false}, // parses to 99999999.999
		{"99999999.9994", false, false, false, false},       // rounds to 99999999.999
		{"9999999999999", false, false, false, true},
		{"9999999999999.0", false, false, false, true},
		{"9.999999999999e12", false, false, false, true},
		{"9999999999999.0000001", false, false, false, false}, // parses to 9999999999999
		{"10000000000000", false, false, false, false},
		{"9007199254740993", false, false, false, false},
		{"1732240000000.5", false, false, false, false},
		{"1732240000000.00000001", false, false, false, false}, // parses to a whole number
		{"17322400000000e-1", false, false, false, true},
		{"1e999999999999999999999", false, false, false, false},
		{"-1e999999999999999999999", false, false, false, false},
		{"1e-999999999999999999999", true, true, false, false},
	} {
		tok := []byte(tc.tok)
		_, pct := percentOf(tok)
		_, pos := secondsOf(tok, false)
		_, dur := secondsOf(tok, true)
		_, ms := millisOf(tok)
		if pct != tc.percent || pos != tc.position || dur != tc.duration || ms != tc.millis {
			t.Errorf("%s: percent %v position %v duration %v millis %v; want %v %v %v %v",
				tc.tok, pct, pos, dur, ms, tc.percent, tc.position, tc.duration, tc.millis)
		}
	}
}

// TestNoNegativeZero guards the stored value of zero: -0 encodes and sorts
// apart from 0, so every zero is stored as +0.
func TestNoNegativeZero(t *testing.T) {
	for _, tok := range []string{"-0", "-0.0", "-0e5", "-0.0004e-3", "0.0004", "1e-400"} {
		if f, ok := secondsOf([]byte(tok), false); ok && (f != 0 || math.Signbit(f)) {
			t.Errorf("%s: position %v (sign bit %v), want +0", tok, f, math.Signbit(f))
		}
		if f, ok := percentOf([]byte(tok)); ok && (f != 0 || math.Signbit(f)) {
			t.Errorf("%s: percent %v (sign bit %v), want +0", tok, f, math.Signbit(f))
		}
	}
}

// FuzzDecimal holds readDecimal to big.Rat (the arithmetic JSON Schema
// validators use) and its float to strconv.ParseFloat (encoding/json's).
func FuzzDecimal(f *testing.F) {
	for _, s := range []string{"0", "-0", "100", "1e2", "0.001", "99999999.999", "-1e-400", "123.456e-7",
		"100.00000000000000001", "9999999999999.0000001", "0.00000000000000000000000012345678901234567890e30"} {
		f.Add(s, "100")
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		if !jsonNumber(a) || !jsonNumber(b) || len(a) > 200 || len(b) > 200 {
			return
		}
		da, db := readDecimal([]byte(a)), readDecimal([]byte(b))
		ra, rb := rat(t, a), rat(t, b)
		if ra == nil || rb == nil {
			return
		}
		if got, want := cmpDecimal(&da, &db), ra.Cmp(rb); got != want {
			t.Fatalf("cmp(%s, %s) = %d, want %d", a, b, got, want)
		}
		if got, want := da.integer(), ra.IsInt(); got != want {
			t.Fatalf("integer(%s) = %v, want %v", a, got, want)
		}
		want, err := strconv.ParseFloat(a, 64)
		if err != nil && !math.IsInf(want, 0) {
			t.Fatalf("ParseFloat(%s): %v", a, err)
		}
		if want == 0 {
			want = 0 // +0
		}
		if got := parseFloat([]byte(a)); got != want || math.Signbit(got) != math.Signbit(want) {
			t.Fatalf("parseFloat(%s) = %v, want %v", a, got, want)
		}
		if got := da.float(); got != want || math.Signbit(got) != math.Signbit(want) {
			t.Fatalf("float(%s) = %v, want %v", a, got, want)
		}
		if ms, ok := millisOf([]byte(a)); ok && big.NewRat(ms, 1).Cmp(ra) != 0 {
			t.Fatalf("millis(%s) = %d", a, ms)
		}
	})
}

// rat reads a token as big.Rat does, or nil when its exponent is too large
// for big.Rat to hold.
func rat(t *testing.T, s string) *big.Rat {
	t.Helper()
	r, ok := new(big.Rat).SetString(s)
	if !ok {
		return nil
	}
	return r
}

// jsonNumber reports whether s is a number by the RFC 8259 grammar.
func jsonNumber(s string) bool {
	sc := scanner{b: []byte(s)}
	return sc.number() != nil && sc.i == len(s)
}
