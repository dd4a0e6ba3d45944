package keepwatch

import (
	"math"
	"time"
	"unicode/utf8"
)

// MaxVideoIDLen and MaxUserIDLen bound the identifiers, and so the memory a
// pending entry takes in the buffer.
const (
	MaxVideoIDLen = 128
	MaxUserIDLen  = 128
)

// ValidVideoID reports whether id is 1–128 characters of [A-Za-z0-9._:-].
func ValidVideoID(id []byte) bool {
	if len(id) == 0 || len(id) > MaxVideoIDLen {
		return false
	}
	for _, c := range id {
		if !videoIDChar[c] {
			return false
		}
	}
	return true
}

var videoIDChar = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
	}
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "._:-" {
		t[c] = true
	}
	return t
}()

// ValidUserID reports whether a token subject can be used as a user id: 1–128
// bytes of valid UTF-8 with no control characters. (Invalid UTF-8 would make
// "inv\xff" and "inv\xfe" one user to any program that replaces bad bytes
// with U+FFFD, as encoding/json does.)
func ValidUserID(id string) bool {
	if len(id) == 0 || len(id) > MaxUserIDLen || !utf8.ValidString(id) {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x20 || id[i] == 0x7f {
			return false
		}
	}
	return true
}

// ValidPercent reports whether p is a finite percentage.
func ValidPercent(p float64) bool { return p >= 0 && p <= 100 }

// ValidSeconds reports whether s can be a position or a duration.
func ValidSeconds(s float64) bool { return s >= 0 && s <= MaxSeconds && !math.IsNaN(s) }

// EventTime orders progress by when it happened without trusting the device's
// clock: the device measures the event's age on its own clock (sentAt − ts) and
// the server subtracts it from its receive time. A device whose clock is hours
// off still measures ages right, and a retried request (same ts, new sentAt)
// lands at its true, older time. The age is clamped to [0, maxAge]; with ts or
// sentAt missing (0) the age is 0.
func EventTime(received time.Time, ts, sentAt int64, maxAge time.Duration) int64 {
	now := received.UnixMilli()
	if ts <= 0 || sentAt <= 0 {
		return now
	}
	age := sentAt - ts
	if age < 0 {
		age = 0
	}
	if m := maxAge.Milliseconds(); age > m {
		age = m
	}
	return now - age
}
