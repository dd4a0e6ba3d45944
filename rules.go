package keepwatch

import (
	"errors"
	"fmt"
)

// Rules decide, at read time, what a stored state means for keep watching:
// whether the video is finished, and whether it was watched long enough to be
// worth resuming. They belong to the read side and are never stored, so a
// change of rules applies to every stored state at once.
//
// A zero field turns its rule off, except FinishedPercent.
type Rules struct {
	// FinishedPercent: at or above it a video is finished.
	FinishedPercent float64
	// FinishedRemaining: with fewer seconds than this left (the credits) a
	// video is finished. It needs the duration; the seconds left are the
	// duration minus the position, or the percent's share of the duration
	// when the player sent no position.
	FinishedRemaining float64
	// MinResumePercent: below it a video is not worth resuming (a misclick).
	MinResumePercent float64
	// MinResumeSeconds: with fewer seconds watched than this a video is not
	// worth resuming (a preview). The seconds watched are the position, or
	// the percent's share of the duration; unknown without either.
	MinResumeSeconds float64
}

// DefaultRules are the documented defaults: finished at 95 %, every other
// rule off.
func DefaultRules() Rules { return Rules{FinishedPercent: 95} }

// Validate checks the rules, naming the flag to fix.
func (r Rules) Validate() error {
	switch {
	case !(r.FinishedPercent > 0 && r.FinishedPercent <= 100):
		return errors.New("--finished-percent must be above 0 and at most 100")
	case !ValidSeconds(r.FinishedRemaining):
		return fmt.Errorf("--finished-remaining must be from 0 to %v seconds", MaxSeconds)
	case !(r.MinResumePercent >= 0 && r.MinResumePercent < r.FinishedPercent):
		return errors.New("--min-resume-percent must be at least 0 and below --finished-percent")
	case !ValidSeconds(r.MinResumeSeconds):
		return fmt.Errorf("--min-resume-seconds must be from 0 to %v seconds", MaxSeconds)
	}
	return nil
}

// Finished reports whether the state's video counts as watched to the end:
// the player said so, or the percent or the seconds left say so.
func (r Rules) Finished(s State) bool {
	if s.Completed || s.Percent >= r.FinishedPercent {
		return true
	}
	if r.FinishedRemaining > 0 && s.Duration > 0 {
		left := s.Duration * (100 - s.Percent) / 100
		if s.Position >= 0 {
			left = s.Duration - s.Position
		}
		return left < r.FinishedRemaining
	}
	return false
}

// TooShort reports whether so little of the video was watched that it is not
// worth resuming.
func (r Rules) TooShort(s State) bool {
	if s.Percent < r.MinResumePercent {
		return true
	}
	if r.MinResumeSeconds > 0 {
		switch {
		case s.Position >= 0:
			return s.Position < r.MinResumeSeconds
		case s.Duration > 0:
			return s.Duration*s.Percent/100 < r.MinResumeSeconds
		}
	}
	return false
}

// InRow reports whether the state belongs in keep watching: progress (not a
// removal or an erase), unfinished, and watched long enough.
func (r Rules) InRow(s State) bool {
	return s.Kind == KindProgress && !r.Finished(s) && !r.TooShort(s)
}

// RowFilter is what a store can check of the rules by itself, to skip
// documents without reading them: a state belongs in keep watching only if
// it is progress newer than After, not completed, and its percent is in
// [MinPercent, BelowPercent). The other rules are checked on what it reads.
type RowFilter struct {
	// After is the event time (ms) a state must be newer than: the age
	// limit, or the user's erase.
	After        int64
	MinPercent   float64
	BelowPercent float64
}

// Filter returns the rules' RowFilter for states newer than after.
func (r Rules) Filter(after int64) RowFilter {
	return RowFilter{After: after, MinPercent: r.MinResumePercent, BelowPercent: r.FinishedPercent}
}
