package command

import (
	"cmp"
	"strconv"
	"unsafe"

	"github.com/keepwatch/keepwatch"
)

// A JSON Schema validator compares a number as the decimal the body spells;
// a float64 is only near it. 100.0000000000000001 parses to the float 100,
// and 1e-400 to -0 when negative, so a rule checked on the float would accept
// what the OpenAPI document refuses. The rules are checked on the decimal;
// the float is only what is stored.

// decimal is a JSON number token read exactly: value = ±0.d₁d₂…dₙ × 10^point,
// where d₁…dₙ are the significant digits of the mantissa (mant[first] to
// mant[last], skipping the decimal point). The token must follow the RFC 8259
// grammar (the scanner and ijson both ensure it).
type decimal struct {
	neg         bool
	mant        []byte // the integer and fraction digits, with the point if any
	dot         int    // index of the point in mant; -1 when none
	first, last int    // first and last nonzero digit in mant; first -1 when zero
	point       int64
	sig         int    // number of significant digits, n
	tok         []byte // the whole token
}

// maxExp bounds the exponent read, keeping the arithmetic far from
// overflow: no body holds 2^40 digits, so a number with a larger exponent is
// beyond every bound either way.
const maxExp = 1 << 40

func readDecimal(tok []byte) decimal {
	d := decimal{first: -1, dot: -1, tok: tok}
	i := 0
	if len(tok) > 0 && tok[0] == '-' {
		d.neg = true
		i++
	}
	start := i
	for i < len(tok) && (tok[i] >= '0' && tok[i] <= '9' || tok[i] == '.') {
		if tok[i] == '.' {
			d.dot = i - start
		}
		i++
	}
	d.mant = tok[start:i]
	var exp int64
	if i < len(tok) { // e or E
		i++
		expNeg := false
		if tok[i] == '+' || tok[i] == '-' {
			expNeg = tok[i] == '-'
			i++
		}
		for ; i < len(tok); i++ {
			if exp < maxExp {
				exp = exp*10 + int64(tok[i]-'0')
			}
		}
		exp = min(exp, maxExp)
		if expNeg {
			exp = -exp
		}
	}
	intDigits := len(d.mant)
	if d.dot >= 0 {
		intDigits = d.dot
	}
	for j, c := range d.mant {
		if c != '.' && c != '0' {
			if d.first < 0 {
				d.first = j
			}
			d.last = j
		}
	}
	if d.first < 0 {
		return d
	}
	// Digits from the first significant one to the point.
	if d.first < intDigits {
		d.point = int64(intDigits-d.first) + exp
	} else {
		d.point = -int64(d.first-intDigits-1) + exp
	}
	d.sig = d.last - d.first + 1
	if d.dot > d.first && d.dot < d.last {
		d.sig--
	}
	return d
}

func (d *decimal) zero() bool { return d.first < 0 }

func (d *decimal) sign() int {
	switch {
	case d.zero():
		return 0
	case d.neg:
		return -1
	}
	return 1
}

// digit returns the k-th significant digit (0-based), '0' past the last.
func (d *decimal) digit(k int) byte {
	if k >= d.sig {
		return '0'
	}
	j := d.first + k
	if d.dot > d.first && j >= d.dot {
		j++
	}
	return d.mant[j]
}

// cmpDecimal returns -1, 0 or +1 as a is less than, equal to or greater
// than b, exactly.
func cmpDecimal(a, b *decimal) int {
	sa, sb := a.sign(), b.sign()
	if sa != sb || sa == 0 {
		return cmp.Compare(sa, sb)
	}
	m := cmpMagnitude(a, b)
	if sa < 0 {
		return -m
	}
	return m
}

func cmpMagnitude(a, b *decimal) int {
	if a.point != b.point {
		return cmp.Compare(a.point, b.point)
	}
	for k := range max(a.sig, b.sig) {
		if da, db := a.digit(k), b.digit(k); da != db {
			return cmp.Compare(da, db)
		}
	}
	return 0
}

// integer reports whether d has no fractional part.
func (d *decimal) integer() bool { return d.zero() || int64(d.sig) <= d.point }

// pow10 holds the powers of ten a float64 holds exactly.
var pow10 = [...]float64{1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
	1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22}

// float returns the float64 nearest to d, as strconv.ParseFloat (and so
// encoding/json) reads the token, with zero always +0: a stored -0 would
// encode and sort apart from 0.
func (d *decimal) float() float64 {
	if d.zero() {
		return 0
	}
	// Clinger's fast path: a mantissa below 2^53 and a power of ten up to
	// 1e22 are exact floats, so one multiplication or division rounds once,
	// correctly. Player bodies always take it.
	if d.sig <= 15 {
		var m uint64
		for k := range d.sig {
			m = m*10 + uint64(d.digit(k)-'0')
		}
		e := d.point - int64(d.sig)
		var f float64
		switch {
		case e >= 0 && e < int64(len(pow10)):
			f = float64(m) * pow10[e]
		case e < 0 && -e < int64(len(pow10)):
			f = float64(m) / pow10[-e]
		default:
			return d.parse()
		}
		if d.neg {
			f = -f
		}
		return f
	}
	return d.parse()
}

func (d *decimal) parse() float64 {
	// The string does not outlive the call and the body is not written
	// meanwhile; a copy would allocate.
	f, _ := strconv.ParseFloat(unsafe.String(unsafe.SliceData(d.tok), len(d.tok)), 64)
	if f == 0 {
		return 0
	}
	return f
}

// whole returns d when it is an integer of at most 18 digits.
func (d *decimal) whole() int64 {
	var n int64
	for k := range d.point {
		n = n*10 + int64(d.digit(int(k))-'0')
	}
	if d.neg {
		n = -n
	}
	return n
}

// parseFloat reads a number token as strconv.ParseFloat (and so
// encoding/json) does: the nearest float64, here with zero always +0, since a
// stored -0 would encode and sort apart from 0.
func parseFloat(tok []byte) float64 {
	// Clinger's fast path for what players send (42.5, 2700): a mantissa
	// below 2^53 and a power of ten up to 1e22 are exact floats, so one
	// division rounds once, correctly.
	var m uint64
	digits, frac := 0, -1
	for i, c := range tok {
		switch {
		case c >= '0' && c <= '9':
			m = m*10 + uint64(c-'0')
			digits++
			if frac >= 0 {
				frac++
			}
		case c == '.':
			frac = 0
		case c == '-' && i == 0:
		default: // an exponent
			d := readDecimal(tok)
			return d.float()
		}
	}
	if digits > 15 {
		d := readDecimal(tok)
		return d.float()
	}
	f := float64(m)
	if frac > 0 {
		f /= pow10[frac]
	}
	if tok[0] == '-' && f != 0 {
		f = -f
	}
	return f
}

// The bounds of the fields, as the OpenAPI document writes them.
var (
	decZero       = readDecimal([]byte("0"))
	decHundred    = readDecimal([]byte("100"))
	decMilli      = readDecimal([]byte("0.001"))
	decMaxSeconds = readDecimal([]byte("99999999.999"))
	decMaxMillis  = readDecimal([]byte("9999999999999"))
)

// maxMillis bounds ts and sent_at: ms since the epoch, before year 2286.
const maxMillis = 9_999_999_999_999

// within reports whether the number tok, which parsed to f, lies in
// [lo, hi]. A float strictly between the bounds' floats is a number strictly
// between the bounds (rounding to nearest keeps the order), so only a float
// equal to a bound's needs the exact reading.
func within(tok []byte, f float64, lo, hi *decimal, flo, fhi float64) bool {
	switch {
	case f > flo && f < fhi:
		return true
	case f < flo || f > fhi || f != f:
		return false
	}
	d := readDecimal(tok)
	return cmpDecimal(&d, lo) >= 0 && cmpDecimal(&d, hi) <= 0
}

// percentOf reads percent: 0 to 100, kept to three decimals.
func percentOf(tok []byte) (float64, bool) {
	f := parseFloat(tok)
	if !within(tok, f, &decZero, &decHundred, 0, 100) {
		return 0, false
	}
	return keepwatch.Round3(f), true
}

// secondsOf reads position (from 0) or duration (from 0.001: a duration
// that rounds to 0 would be no duration), kept to milliseconds.
func secondsOf(tok []byte, duration bool) (float64, bool) {
	f := parseFloat(tok)
	lo, flo := &decZero, 0.0
	if duration {
		lo, flo = &decMilli, 0.001
	}
	if !within(tok, f, lo, &decMaxSeconds, flo, keepwatch.MaxSeconds) {
		return 0, false
	}
	return keepwatch.Round3(f), true
}

// millisOf reads ts and sent_at: a whole number of ms since the epoch.
func millisOf(tok []byte) (int64, bool) {
	// What players send: up to 13 plain digits, a whole number in range.
	if len(tok) <= 13 {
		var n int64
		plain := true
		for _, c := range tok {
			if c < '0' || c > '9' {
				plain = false
				break
			}
			n = n*10 + int64(c-'0')
		}
		if plain {
			return n, true
		}
	}
	d := readDecimal(tok)
	if !d.integer() || cmpDecimal(&d, &decZero) < 0 || cmpDecimal(&d, &decMaxMillis) > 0 {
		return 0, false
	}
	return d.whole(), true
}
