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
	// KindErased is the state of a user's erase (DELETE /v1/progress, keepwatch
	// erase): kept under the user's erase key (video id ""), it hides every
	// state of the user at or before its event time, and never a newer one.
	KindErased Kind = 2
)

// Unknown marks an optional number (position, duration, episode) the player
// did not send. It is negative so that it sorts below every real value in the
// tie-break.
const Unknown = -1.0

// State is the value kept for one (user, video). States are totally ordered by
// Compare: event time first, then the remaining fields as a deterministic
// tie-break (a removal beats progress at the same instant, then the higher
// percent, position and duration, then completed, episode and series). The
// same order is used by the Redis buffer (lexicographic order of Encode) and by
// MongoDB ($max on the embedded document whose fields are stored in this
// order), so every store converges to the same winner whatever the arrival
// order.
//
// The fields after Duration came with series and completion; states stored
// before them decode with their zero values (false, Unknown, ""), which are
// the lowest of each, so an old state orders exactly as it did.
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
	// Completed is the player's own word that the video was watched to the
	// end (its "ended" event), whatever the percent.
	Completed bool
	// Episode orders the videos of a series (0–MaxSeconds, three decimals),
	// or Unknown.
	Episode float64
	// SeriesID groups the episodes of a series in keep watching ("": none);
	// it follows the rules of video ids.
	SeriesID string
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
	if c := cmp.Compare(s.Duration, o.Duration); c != 0 {
		return c
	}
	if s.Completed != o.Completed {
		if s.Completed {
			return 1
		}
		return -1
	}
	if c := cmp.Compare(s.Episode, o.Episode); c != 0 {
		return c
	}
	return cmp.Compare(s.SeriesID, o.SeriesID)
}

// Newer reports whether s wins over o.
func (s State) Newer(o State) bool { return s.Compare(o) > 0 }

// Deleted reports whether the state is a tombstone.
func (s State) Deleted() bool { return s.Kind == KindDeleted }

// Erased reports whether the state is a user's erase.
func (s State) Erased() bool { return s.Kind == KindErased }

// Limits of the encoded fields. Values outside them are rejected by validation,
// so that every stored state has a fixed-width encoding.
const (
	// MaxSeconds bounds position, duration and episode (about 3 years of
	// video).
	MaxSeconds = 99_999_999.999
)

// EncodedLen is the length of the fixed-width head every encoded state
// starts with, and the whole length of a state whose completed, episode and
// series are unset, as every state was before they existed.
const EncodedLen = 13 + 1 + 1 + 1 + 7 + 1 + 12 + 1 + 12

// tailHead is the fixed part of the tail: "|C|eeeeeeeeeeee|".
const tailHead = 1 + 1 + 1 + 12 + 1

// MaxEncodedLen is the length of the longest encoded state.
const MaxEncodedLen = EncodedLen + tailHead + MaxVideoIDLen

// hasTail reports whether s needs the encoding's tail.
func (s State) hasTail() bool { return s.Completed || s.Episode != Unknown || s.SeriesID != "" }

// AppendEncode appends the buffer encoding of s to b. Comparing two
// encodings as byte strings (as the Redis scripts do) gives the same order as
// Compare, and the encoding is canonical: decoding and encoding again gives
// the same bytes.
//
// Layout: a fixed-width head, "TTTTTTTTTTTTT|K|PPP.PPP|pppppppp.ppp|dddddddd.ddd",
// and, only when completed, episode or series is set, the tail
// "|C|eeeeeeeeeeee|<series>". A head alone is a prefix of every encoding with
// the same head and a tail, and sorts below it, as a state with the lowest
// completed, episode and series does; so the encodings buffered before the
// tail existed keep decoding and ordering right.
func (s State) AppendEncode(b []byte) []byte {
	b = appendPadded(b, s.EventTime, 13)
	b = append(b, '|', '0'+byte(s.Kind), '|')
	b = appendFixed(b, s.Percent, 7)
	b = append(b, '|')
	b = appendFixed(b, s.Position, 12)
	b = append(b, '|')
	b = appendFixed(b, s.Duration, 12)
	if !s.hasTail() {
		return b
	}
	c := byte('0')
	if s.Completed {
		c = '1'
	}
	b = append(b, '|', c, '|')
	b = appendFixed(b, s.Episode, 12)
	b = append(b, '|')
	return append(b, s.SeriesID...)
}

// Encode returns the buffer encoding of s.
func (s State) Encode() string {
	n := EncodedLen
	if s.hasTail() {
		n += tailHead + len(s.SeriesID)
	}
	return string(s.AppendEncode(make([]byte, 0, n)))
}

// DecodeState parses an encoding made by AppendEncode, by this build or by
// one before the tail existed. It refuses anything else, a tail that holds
// only unset fields included, so that every accepted encoding is canonical.
func DecodeState(v string) (State, error) {
	if len(v) < EncodedLen || v[13] != '|' || v[15] != '|' || v[23] != '|' || v[36] != '|' {
		return State{}, fmt.Errorf("decode state %q: bad layout", v)
	}
	t, err := strconv.ParseInt(v[:13], 10, 64)
	if err != nil {
		return State{}, fmt.Errorf("decode state %q: event time: %w", v, err)
	}
	k := Kind(v[14] - '0')
	if k > KindErased {
		return State{}, fmt.Errorf("decode state %q: bad kind", v)
	}
	var f [4]float64
	parts := [4]string{v[16:23], v[24:36], v[37:EncodedLen], ""}
	st := State{EventTime: t, Kind: k, Episode: Unknown}
	if len(v) > EncodedLen {
		tail := v[EncodedLen:]
		if len(tail) < tailHead || tail[0] != '|' || tail[2] != '|' || tail[15] != '|' || (tail[1] != '0' && tail[1] != '1') {
			return State{}, fmt.Errorf("decode state %q: bad tail", v)
		}
		st.Completed = tail[1] == '1'
		parts[3] = tail[3:15]
		st.SeriesID = tail[tailHead:]
		if st.SeriesID != "" && !ValidVideoID([]byte(st.SeriesID)) {
			return State{}, fmt.Errorf("decode state %q: bad series", v)
		}
	}
	for i, part := range parts {
		if part == "" {
			break
		}
		if f[i], err = strconv.ParseFloat(part, 64); err != nil {
			return State{}, fmt.Errorf("decode state %q: field %d: %w", v, i, err)
		}
	}
	st.Percent, st.Position, st.Duration = f[0], f[1], f[2]
	if parts[3] != "" {
		st.Episode = f[3]
		if !st.hasTail() {
			return State{}, fmt.Errorf("decode state %q: a tail of unset fields", v)
		}
	}
	return st, nil
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

// EraseState is the state of a user's erase at event time at.
func EraseState(at int64) State {
	return State{EventTime: at, Kind: KindErased, Position: Unknown, Duration: Unknown, Episode: Unknown}
}

// Progress is the state of one video for one user, as both sides exchange it.
// A user's erase is a Progress whose VideoID is "" (see KindErased).
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
