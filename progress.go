// Package keepwatch holds the domain of the keep-watching service: the progress
// state of one (user, video), the newest-wins rule that orders every write, the
// validation rules shared by both sides and the error type every layer returns.
//
// The command side (package command) accepts progress and buffers it, the query
// side (package query) serves it; storage adapters live under storage/.
package keepwatch

import (
	"cmp"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Kind tells progress from a removal. A removal is a tombstone ordered by event
// time like any progress, so it hides older progress and never newer.
type Kind uint8

const (
	// KindProgress is a watched position.
	KindProgress Kind = 0
	// KindDeleted removes the video from keep watching.
	KindDeleted Kind = 1
)

// Unknown marks an optional number (position, duration) the player did not send.
// It is negative so that it sorts below every real value in the tie-break.
const Unknown = -1.0

// State is the value kept for one (user, video). States are totally ordered by
// Compare: event time first, then the remaining fields as a deterministic
// tie-break (a removal beats progress at the same instant, then the higher
// percent, position and duration). The same order is used by the Redis buffer
// (lexicographic order of Encode) and by MongoDB ($max on the embedded
// document whose fields are stored in this order), so every store converges to
// the same winner whatever the arrival order.
type State struct {
	// EventTime is when the progress happened, in ms since the Unix epoch, on
	// the server's clock (see EventTime).
	EventTime int64
	Kind      Kind
	// Percent is 0–100, rounded to three decimals.
	Percent float64
	// Position and Duration are seconds rounded to milliseconds, or Unknown.
	Position float64
	Duration float64
}

// Compare returns -1, 0 or +1 as s is older than, the same as or newer than o.
func (s State) Compare(o State) int {
	if c := cmp.Compare(s.EventTime, o.EventTime); c != 0 {
		return c
	}
	if c := cmp.Compare(s.Kind, o.Kind); c != 0 {
		return c
	}
	if c := cmp.Compare(s.Percent, o.Percent); c != 0 {
		return c
	}
	if c := cmp.Compare(s.Position, o.Position); c != 0 {
		return c
	}
	return cmp.Compare(s.Duration, o.Duration)
}

// Newer reports whether s wins over o.
func (s State) Newer(o State) bool { return s.Compare(o) > 0 }

// Deleted reports whether the state is a tombstone.
func (s State) Deleted() bool { return s.Kind == KindDeleted }

// Limits of the encoded fields. Values outside them are rejected by validation,
// so that every stored state has a fixed-width encoding.
const (
	// MaxSeconds bounds position and duration (about 3 years of video).
	MaxSeconds = 99_999_999.999
)

// EncodedLen is the length of every encoded state.
const EncodedLen = 13 + 1 + 1 + 1 + 7 + 1 + 12 + 1 + 12

// AppendEncode appends the buffer encoding of s to b. The encoding has a fixed
// width, so comparing two encodings as byte strings (as the Redis scripts do)
// gives the same order as Compare.
//
// Layout: "TTTTTTTTTTTTT|K|PPP.PPP|pppppppp.ppp|dddddddd.ddd".
func (s State) AppendEncode(b []byte) []byte {
	b = appendPadded(b, s.EventTime, 13)
	b = append(b, '|', '0'+byte(s.Kind), '|')
	b = appendFixed(b, s.Percent, 7)
	b = append(b, '|')
	b = appendFixed(b, s.Position, 12)
	b = append(b, '|')
	return appendFixed(b, s.Duration, 12)
}

// Encode returns the buffer encoding of s.
func (s State) Encode() string {
	return string(s.AppendEncode(make([]byte, 0, EncodedLen)))
}

// DecodeState parses an encoding made by AppendEncode.
func DecodeState(v string) (State, error) {
	if len(v) != EncodedLen || v[13] != '|' || v[15] != '|' || v[23] != '|' || v[36] != '|' {
		return State{}, fmt.Errorf("decode state %q: bad layout", v)
	}
	t, err := strconv.ParseInt(v[:13], 10, 64)
	if err != nil {
		return State{}, fmt.Errorf("decode state %q: event time: %w", v, err)
	}
	k := Kind(v[14] - '0')
	if k != KindProgress && k != KindDeleted {
		return State{}, fmt.Errorf("decode state %q: bad kind", v)
	}
	var f [3]float64
	for i, part := range [3]string{v[16:23], v[24:36], v[37:]} {
		if f[i], err = strconv.ParseFloat(part, 64); err != nil {
			return State{}, fmt.Errorf("decode state %q: field %d: %w", v, i, err)
		}
	}
	return State{EventTime: t, Kind: k, Percent: f[0], Position: f[1], Duration: f[2]}, nil
}

func appendPadded(b []byte, n int64, width int) []byte {
	var tmp [20]byte
	s := strconv.AppendInt(tmp[:0], n, 10)
	for i := len(s); i < width; i++ {
		b = append(b, '0')
	}
	return append(b, s...)
}

// appendFixed writes v with three decimals, zero-padded to width. Unknown (-1)
// is written as "-0000001.000", which sorts below every non-negative value.
func appendFixed(b []byte, v float64, width int) []byte {
	neg := v < 0
	if neg {
		v = -v
	}
	milli := int64(math.Round(v * 1000))
	var tmp [24]byte
	s := strconv.AppendInt(tmp[:0], milli, 10)
	for len(s) < 4 {
		s = append([]byte{'0'}, s...)
	}
	intPart, frac := s[:len(s)-3], s[len(s)-3:]
	n := len(intPart) + 4
	if neg {
		b = append(b, '-')
		n++
	}
	for i := n; i < width; i++ {
		b = append(b, '0')
	}
	b = append(b, intPart...)
	b = append(b, '.')
	return append(b, frac...)
}

// Round3 rounds to three decimals, the precision every store keeps.
func Round3(v float64) float64 { return math.Round(v*1000) / 1000 }

// Progress is the state of one video for one user, as both sides exchange it.
type Progress struct {
	UserID  string
	VideoID string
	State
}

// ID is the document identity of a (user, video). Video ids never contain '/',
// so the last '/' separates the two unambiguously whatever the user id holds.
func ID(userID, videoID string) string { return userID + "/" + videoID }

// SplitID is the inverse of ID.
func SplitID(id string) (userID, videoID string, ok bool) {
	i := strings.LastIndexByte(id, '/')
	if i < 0 {
		return "", "", false
	}
	return id[:i], id[i+1:], true
}

// Entry is one video's new state inside a Write.
type Entry struct {
	VideoID string
	State   State
}

// Write is what one request stores for one user: its events, applied
// all-or-nothing.
type Write struct {
	UserID  string
	Entries []Entry
}

// BufferStats is a cheap snapshot of the write buffer.
type BufferStats struct {
	// Pending is the number of pending entries (claimed ones included).
	Pending int64
	// Oldest is when the oldest pending entry became pending; zero when none.
	Oldest time.Time
}
