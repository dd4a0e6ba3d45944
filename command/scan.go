package command

import (
	"unicode/utf8"

	"github.com/keepwatch/keepwatch"
)

// scanProgress is the single pass a player's ordinary POST /v1/progress body
// takes: a flat object of plain strings and numbers, every field valid. It
// reads the body once, where validating and then parsing read it twice and
// look each field up by name again (the decoder was a tenth of the request's
// CPU). A series' fields (series_id, episode, completed) are ordinary
// fields of that body and take the same pass. It answers ok only for a body decodeProgress would accept with the same
// event; anything else (escapes, nesting, repeated keys, a key that differs
// from a field's name only in case, non-ASCII keys, any invalid or mistyped
// field, bad JSON) is left to decodeProgress, which owns every error message.
// FuzzScanProgress holds it to that.
func scanProgress(body []byte, tm timing) (ev progressEvent, ok bool) {
	var pct, pos, dur, ts, sentAt, episode []byte
	var seen uint16 // bit per known field: a repeated field goes the slow way
	// The unknown keys so far, to find a repeated one without allocating;
	// a body with more than eight goes the slow way.
	var unknown [8][]byte
	nUnknown := 0
	s := scanner{b: body}
	s.space()
	if !s.byte('{') {
		return ev, false
	}
	s.space()
	if s.byte('}') {
		return ev, false // no video_id: an error
	}
	for {
		key, okKey := s.str()
		if !okKey {
			return ev, false
		}
		s.space()
		if !s.byte(':') {
			return ev, false
		}
		s.space()
		var bit uint16
		var dst *[]byte
		switch string(key) {
		case "video_id":
			bit = 1
			v, okStr := s.str()
			if !okStr {
				return ev, false
			}
			ev.videoID = v
		case "series_id":
			bit = 64
			if !s.literal("null") {
				v, okStr := s.str()
				if !okStr || !keepwatch.ValidVideoID(v) {
					return ev, false
				}
				ev.seriesID = v
			}
		case "episode":
			bit, dst = 128, &episode
		case "completed":
			bit = 256
			switch {
			case s.literal("true"):
				ev.state.Completed = true
			case s.literal("false"), s.literal("null"):
			default:
				return ev, false
			}
		case "percent":
			bit, dst = 2, &pct
		case "position":
			bit, dst = 4, &pos
		case "duration":
			bit, dst = 8, &dur
		case "ts":
			bit, dst = 16, &ts
		case "sent_at":
			bit, dst = 32, &sentAt
		default:
			if nUnknown == len(unknown) || !plainKey(key) {
				return ev, false
			}
			for _, k := range unknown[:nUnknown] {
				if string(k) == string(key) {
					return ev, false
				}
			}
			unknown[nUnknown] = key
			nUnknown++
			if !s.scalar() {
				return ev, false
			}
		}
		if seen&bit != 0 {
			return ev, false
		}
		seen |= bit
		if dst != nil {
			// A number, or null (absent) for all but percent.
			if s.literal("null") {
				if bit == 2 {
					return ev, false
				}
				*dst = nil
			} else if *dst = s.number(); *dst == nil {
				return ev, false
			}
		}
		s.space()
		if s.byte('}') {
			break
		}
		if !s.byte(',') {
			return ev, false
		}
		s.space()
	}
	s.space()
	if s.i != len(s.b) || seen&3 != 3 || !keepwatch.ValidVideoID(ev.videoID) {
		return ev, false
	}
	ev.state.Kind = keepwatch.KindProgress
	if ev.state.Percent, ok = percentOf(pct); !ok {
		return ev, false
	}
	if ev.state.Position, ok = scanSeconds(pos, false); !ok {
		return ev, false
	}
	if ev.state.Duration, ok = scanSeconds(dur, true); !ok {
		return ev, false
	}
	if ev.state.Episode, ok = scanSeconds(episode, false); !ok {
		return ev, false
	}
	if ev.ts, ok = scanMillis(ts); !ok {
		return ev, false
	}
	sent, ok := scanMillis(sentAt)
	if !ok {
		return ev, false
	}
	ev.state.EventTime = keepwatch.EventTime(tm.received, ev.ts, sent, tm.maxAge)
	return ev, true
}

// plainKey reports whether an unknown key can stay on the fast path: ASCII
// and not a field's name in other case (which decodeProgress refuses).
func plainKey(key []byte) bool {
	for _, c := range key {
		if c >= utf8.RuneSelf {
			return false
		}
	}
	_, variant := caseVariant(key, eventFields[:])
	return !variant
}

// scanSeconds is optSeconds for a scanned number token (nil: absent or null).
func scanSeconds(tok []byte, duration bool) (float64, bool) {
	if tok == nil {
		return keepwatch.Unknown, true
	}
	return secondsOf(tok, duration)
}

// scanMillis is optMillis for a scanned number token (nil: absent or null).
func scanMillis(tok []byte) (int64, bool) {
	if tok == nil {
		return 0, true
	}
	return millisOf(tok)
}

// scanner reads JSON tokens of the narrow shape scanProgress accepts.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *scanner) byte(c byte) bool {
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

func (s *scanner) literal(lit string) bool {
	if len(s.b)-s.i >= len(lit) && string(s.b[s.i:s.i+len(lit)]) == lit {
		s.i += len(lit)
		return true
	}
	return false
}

// str reads a string of valid UTF-8 without escapes or control characters
// and returns its bytes; any other string is not for the fast path.
func (s *scanner) str() ([]byte, bool) {
	if !s.byte('"') {
		return nil, false
	}
	start := s.i
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			s.i++
			return s.b[start : s.i-1], true
		case c == '\\' || c < 0x20:
			return nil, false
		case c >= utf8.RuneSelf:
			r, size := utf8.DecodeRune(s.b[s.i:])
			if r == utf8.RuneError && size <= 1 {
				return nil, false
			}
			s.i += size
			continue
		}
		s.i++
	}
	return nil, false
}

// number reads a JSON number by the RFC 8259 grammar and returns its token.
func (s *scanner) number() []byte {
	start := s.i
	s.byte('-')
	switch {
	case s.byte('0'):
	case s.digits() == 0:
		return nil
	}
	if s.byte('.') && s.digits() == 0 {
		return nil
	}
	if s.byte('e') || s.byte('E') {
		if !s.byte('+') {
			s.byte('-')
		}
		if s.digits() == 0 {
			return nil
		}
	}
	return s.b[start:s.i]
}

func (s *scanner) digits() int {
	n := 0
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
		n++
	}
	return n
}

// scalar skips a plain string, number, true, false or null (an unknown field).
func (s *scanner) scalar() bool {
	if s.i >= len(s.b) {
		return false
	}
	switch s.b[s.i] {
	case '"':
		_, ok := s.str()
		return ok
	case 't':
		return s.literal("true")
	case 'f':
		return s.literal("false")
	case 'n':
		return s.literal("null")
	}
	return s.number() != nil
}
