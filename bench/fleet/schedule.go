// Package fleet simulates a fleet of video players and their frontends
// against keepwatch (or a baseline) in an open model: every request has a
// scheduled time fixed in advance and is sent then whether or not earlier
// requests have returned, and its latency is measured from that scheduled
// time. A slow server therefore shows as latency, never as a quietly lower
// request rate (no coordinated omission).
package fleet

import (
	"math"
	"time"
)

// Schedule spaces request slots evenly at Rate per second. Slot n belongs to
// player n mod Players, so each player's requests are Players/Rate apart:
// its post period.
type Schedule struct {
	Rate    float64
	Players int
}

// NewSchedule returns the schedule of rate requests per second by players
// each posting every period (rounded to whole players, at least one).
func NewSchedule(rate float64, period time.Duration) Schedule {
	p := int(math.Round(rate * period.Seconds()))
	return Schedule{Rate: rate, Players: max(p, 1)}
}

// Due is slot n's offset from the start of the run.
func (s Schedule) Due(n int64) time.Duration {
	return time.Duration(float64(n) * float64(time.Second) / s.Rate)
}

// Player is the player slot n belongs to, and its tick is which of that
// player's requests it is (0, 1, 2, …).
func (s Schedule) Player(n int64) (player int, tick int64) {
	return int(n % int64(s.Players)), n / int64(s.Players)
}

// Period is the time between one player's slots.
func (s Schedule) Period() time.Duration {
	return time.Duration(float64(s.Players) * float64(time.Second) / s.Rate)
}

// DueBy is how many slots are due at offset d: slots 0 … DueBy(d)-1.
func (s Schedule) DueBy(d time.Duration) int64 {
	if d < 0 {
		return 0
	}
	// Float rounding can put the estimate one off either way: settle it
	// against Due itself, so DueBy(Due(n)) always counts slot n.
	k := int64(math.Floor(d.Seconds() * s.Rate))
	for s.Due(k+1) <= d {
		k++
	}
	for k >= 0 && s.Due(k) > d {
		k--
	}
	return k + 1
}

// Slots is the number of slots in a run of length d.
func (s Schedule) Slots(d time.Duration) int64 {
	return int64(math.Ceil(d.Seconds() * s.Rate))
}
