// Package ijson checks that a JSON text is I-JSON (RFC 7493): JSON by the
// strict grammar of RFC 8259, valid UTF-8, no \u escape naming a lone UTF-16
// surrogate, and no object naming one key twice, escaped spellings included.
//
// JSON libraries disagree on exactly these texts: on a repeated key Go and
// Python keep the last value and fastjson the first; invalid UTF-8 is replaced
// by one library and refused by another. A text that passes Check means the
// same to all of them, so a gateway that validates a body sees the event
// keepwatch stores.
package ijson

import (
	"cmp"
	"slices"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
	"unsafe"
)

// Error says why a text is not I-JSON. Its message quotes at most a short
// key of the text and is safe to show to the client who sent it.
type Error struct {
	Offset int    // byte offset in the text where the problem is
	Reason string // what is wrong, e.g. `the key "percent" appears twice in one object`
	// Key is the repeated key when the text repeats one.
	Key string
}

func (e *Error) Error() string { return e.Reason + " (byte " + strconv.Itoa(e.Offset) + ")" }

// Checker checks texts, reusing its scratch memory: a Checker used again
// checks an ordinary text without allocating. It is not safe for concurrent
// use.
type Checker struct {
	b        []byte
	i        int
	maxDepth int
	// keys holds the keys of the objects being read, innermost last, as
	// strings pointing into b or into buf (escaped keys, decoded).
	keys []keyAt
	buf  []byte
}

type keyAt struct {
	key string
	off int
}

// Check reports the first reason b is not one I-JSON value, allowing
// objects and arrays to nest at most maxDepth deep (1: no container inside a
// container). The value may be of any type; callers check that.
func (c *Checker) Check(b []byte, maxDepth int) error {
	c.b, c.i, c.maxDepth = b, 0, maxDepth
	c.keys, c.buf = c.keys[:0], c.buf[:0]
	err := c.value(0)
	if err == nil {
		c.space()
		if c.i != len(c.b) {
			err = c.fail("text after the JSON value")
		}
	}
	// Let go of the text: the strings point into it.
	clear(c.keys[:cap(c.keys)])
	c.b = nil
	return err
}

// Check is Checker.Check with a fresh Checker.
func Check(b []byte, maxDepth int) error {
	var c Checker
	return c.Check(b, maxDepth)
}

func (c *Checker) fail(reason string) *Error { return &Error{Offset: c.i, Reason: reason} }

func (c *Checker) space() {
	for c.i < len(c.b) {
		switch c.b[c.i] {
		case ' ', '\t', '\n', '\r':
			c.i++
		default:
			return
		}
	}
}

func (c *Checker) value(depth int) error {
	c.space()
	if c.i >= len(c.b) {
		return c.fail("unexpected end of the text")
	}
	switch ch := c.b[c.i]; {
	case ch == '{':
		return c.object(depth + 1)
	case ch == '[':
		return c.array(depth + 1)
	case ch == '"':
		_, err := c.str(false)
		return err
	case ch == '-' || ch >= '0' && ch <= '9':
		return c.number()
	case ch == 't':
		return c.literal("true")
	case ch == 'f':
		return c.literal("false")
	case ch == 'n':
		return c.literal("null")
	}
	return c.fail("unexpected character " + quoteByte(c.b[c.i]))
}

func (c *Checker) nest(depth int) error {
	if depth > c.maxDepth {
		return c.fail("objects and arrays nest deeper than " + strconv.Itoa(c.maxDepth))
	}
	return nil
}

func (c *Checker) object(depth int) error {
	if err := c.nest(depth); err != nil {
		return err
	}
	c.i++ // {
	first := len(c.keys)
	c.space()
	if c.i < len(c.b) && c.b[c.i] == '}' {
		c.i++
		return nil
	}
	for {
		c.space()
		if c.i >= len(c.b) || c.b[c.i] != '"' {
			return c.fail("expected a key in quotes")
		}
		off := c.i
		key, err := c.str(true)
		if err != nil {
			return err
		}
		c.keys = append(c.keys, keyAt{key, off})
		c.space()
		if c.i >= len(c.b) || c.b[c.i] != ':' {
			return c.fail("expected ':' after a key")
		}
		c.i++
		if err := c.value(depth); err != nil {
			return err
		}
		c.space()
		if c.i >= len(c.b) {
			return c.fail("unexpected end of the text")
		}
		if c.b[c.i] == '}' {
			c.i++
			break
		}
		if c.b[c.i] != ',' {
			return c.fail("expected ',' or '}' in an object")
		}
		c.i++
	}
	err := repeated(c.keys[first:])
	c.keys = c.keys[:first]
	return err
}

// repeated finds a key named twice. Sorting costs no allocation and keeps
// an object of thousands of keys (a 64 KiB body holds 10,000) from costing
// millions of comparisons.
func repeated(keys []keyAt) error {
	if len(keys) < 2 {
		return nil
	}
	slices.SortFunc(keys, func(a, b keyAt) int {
		if c := cmp.Compare(a.key, b.key); c != 0 {
			return c
		}
		return cmp.Compare(a.off, b.off)
	})
	for i := 1; i < len(keys); i++ {
		if keys[i].key == keys[i-1].key {
			k := keys[i].key
			return &Error{Offset: keys[i].off, Key: k, Reason: "the key " + QuoteKey(k) + " appears twice in one object"}
		}
	}
	return nil
}

// QuoteKey quotes a key for a message, cut to 64 bytes.
func QuoteKey(k string) string {
	if len(k) > 64 {
		n := 64
		for n > 0 && !utf8.RuneStart(k[n]) {
			n--
		}
		return strconv.Quote(k[:n]) + "…"
	}
	return strconv.Quote(k)
}

func (c *Checker) array(depth int) error {
	if err := c.nest(depth); err != nil {
		return err
	}
	c.i++ // [
	c.space()
	if c.i < len(c.b) && c.b[c.i] == ']' {
		c.i++
		return nil
	}
	for {
		if err := c.value(depth); err != nil {
			return err
		}
		c.space()
		if c.i >= len(c.b) {
			return c.fail("unexpected end of the text")
		}
		if c.b[c.i] == ']' {
			c.i++
			return nil
		}
		if c.b[c.i] != ',' {
			return c.fail("expected ',' or ']' in an array")
		}
		c.i++
	}
}

func (c *Checker) literal(lit string) error {
	if len(c.b)-c.i >= len(lit) && string(c.b[c.i:c.i+len(lit)]) == lit {
		c.i += len(lit)
		return nil
	}
	return c.fail("unexpected character " + quoteByte(c.b[c.i]))
}

// number reads a number by the grammar of RFC 8259.
func (c *Checker) number() error {
	start := c.i
	if c.b[c.i] == '-' {
		c.i++
	}
	switch {
	case c.i < len(c.b) && c.b[c.i] == '0':
		c.i++
	case c.digits() == 0:
		c.i = start
		return c.fail("invalid number")
	}
	if c.i < len(c.b) && c.b[c.i] == '.' {
		c.i++
		if c.digits() == 0 {
			return c.fail("invalid number: no digit after the decimal point")
		}
	}
	if c.i < len(c.b) && (c.b[c.i] == 'e' || c.b[c.i] == 'E') {
		c.i++
		if c.i < len(c.b) && (c.b[c.i] == '+' || c.b[c.i] == '-') {
			c.i++
		}
		if c.digits() == 0 {
			return c.fail("invalid number: no digit in the exponent")
		}
	}
	return nil
}

func (c *Checker) digits() int {
	n := 0
	for c.i < len(c.b) && c.b[c.i] >= '0' && c.b[c.i] <= '9' {
		c.i++
		n++
	}
	return n
}

// str reads a string. With decode, it returns the string's value (for a key
// to compare): the text's own bytes when it has no escape, else the decoded
// bytes appended to buf. The returned string does not outlive the Check
// call: buf is reused by the next one, and a buf that grows leaves the
// earlier strings on its previous array, which the strings keep alive.
func (c *Checker) str(decode bool) (string, error) {
	c.i++ // "
	start := c.i
	escaped := false
	mark := len(c.buf)
	for c.i < len(c.b) {
		ch := c.b[c.i]
		switch {
		case ch == '"':
			raw := c.b[start:c.i]
			c.i++
			switch {
			case !decode:
				return "", nil
			case !escaped:
				return unsafe.String(unsafe.SliceData(raw), len(raw)), nil
			default:
				dec := c.buf[mark:]
				return unsafe.String(unsafe.SliceData(dec), len(dec)), nil
			}
		case ch == '\\':
			if decode && !escaped {
				c.buf = append(c.buf, c.b[start:c.i]...)
			}
			escaped = true
			if err := c.escape(decode); err != nil {
				return "", err
			}
		case ch < 0x20:
			return "", c.fail("control character in a string: escape it")
		case ch < utf8.RuneSelf:
			if decode && escaped {
				c.buf = append(c.buf, ch)
			}
			c.i++
		default:
			r, size := utf8.DecodeRune(c.b[c.i:])
			if r == utf8.RuneError && size <= 1 {
				return "", c.fail("invalid UTF-8")
			}
			if decode && escaped {
				c.buf = append(c.buf, c.b[c.i:c.i+size]...)
			}
			c.i += size
		}
	}
	return "", c.fail("unterminated string")
}

// escape reads one escape sequence at c.i (the backslash), appending what it
// stands for to buf when decode is set.
func (c *Checker) escape(decode bool) error {
	if c.i+1 >= len(c.b) {
		return c.fail("unterminated string")
	}
	var out byte
	switch c.b[c.i+1] {
	case '"', '\\', '/':
		out = c.b[c.i+1]
	case 'b':
		out = '\b'
	case 'f':
		out = '\f'
	case 'n':
		out = '\n'
	case 'r':
		out = '\r'
	case 't':
		out = '\t'
	case 'u':
		r, ok := c.hex4(c.i + 2)
		if !ok {
			return c.fail(`invalid \u escape: four hexadecimal digits must follow`)
		}
		n := 6
		switch {
		case utf16.IsSurrogate(r) && r < 0xdc00: // high: a low one must follow
			lo, ok := rune(0), c.i+7 < len(c.b) && c.b[c.i+6] == '\\' && c.b[c.i+7] == 'u'
			if ok {
				lo, ok = c.hex4(c.i + 8)
			}
			if !ok || lo < 0xdc00 || lo > 0xdfff {
				return c.fail(`lone UTF-16 surrogate in a \u escape`)
			}
			r, n = utf16.DecodeRune(r, lo), 12
		case utf16.IsSurrogate(r):
			return c.fail(`lone UTF-16 surrogate in a \u escape`)
		}
		if decode {
			c.buf = utf8.AppendRune(c.buf, r)
		}
		c.i += n
		return nil
	default:
		return c.fail("invalid escape " + quoteByte(c.b[c.i+1]) + " in a string")
	}
	if decode {
		c.buf = append(c.buf, out)
	}
	c.i += 2
	return nil
}

func (c *Checker) hex4(at int) (rune, bool) {
	if at+4 > len(c.b) {
		return 0, false
	}
	var r rune
	for _, ch := range c.b[at : at+4] {
		switch {
		case ch >= '0' && ch <= '9':
			r = r<<4 | rune(ch-'0')
		case ch >= 'a' && ch <= 'f':
			r = r<<4 | rune(ch-'a'+10)
		case ch >= 'A' && ch <= 'F':
			r = r<<4 | rune(ch-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}

func quoteByte(b byte) string {
	if b >= 0x20 && b < utf8.RuneSelf {
		return strconv.QuoteRune(rune(b))
	}
	return "byte 0x" + strconv.FormatUint(uint64(b), 16)
}
