// Package query is the read side of keepwatch: the HTTP API frontends call to
// draw the keep-watching row and progress bars.
//
// Answers come from MongoDB (through Store) merged with the user's entries
// still pending in the Redis buffer (through Pending), newest state winning per
// video, so progress posted a moment ago shows at once, long before the flush
// writes it. Redis is optional for an answer (without it the answer is
// MongoDB's alone, and a header says so); MongoDB is not (503).
package query

import (
	"cmp"
	"context"
	"slices"
	"time"

	"github.com/keepwatch/keepwatch"
)

// Store reads the progress MongoDB holds. Its errors wrap
// keepwatch.ErrUnavailable when the server cannot be reached; the query
// service answers 503 for every Store error.
type Store interface {
	// KeepWatching returns up to limit of the user's states, newest event
	// time first: every progress with a percent below finishedThreshold that
	// is not a removal, and the states of the videos in also whatever they
	// are, when they rank within the limit.
	KeepWatching(ctx context.Context, userID string, finishedThreshold float64, limit int, also []string) ([]keepwatch.Progress, error)
	// Progress returns the user's states of videoIDs; videos with none are absent.
	Progress(ctx context.Context, userID string, videoIDs []string) ([]keepwatch.Progress, error)
}

// Pending reads the user's entries still pending in the write buffer. Errors
// wrap keepwatch.ErrUnavailable when the buffer cannot be reached.
type Pending interface {
	Pending(ctx context.Context, userID string) ([]keepwatch.Progress, error)
}

// reader answers the three questions of the API from a Store and an optional
// Pending overlay. It knows nothing of HTTP.
type reader struct {
	store          Store
	pending        Pending // nil: overlay off
	threshold      float64
	overlayTimeout time.Duration
	metrics        *metrics
}

// result is an answer and whether the overlay could be applied.
type result struct {
	items []keepwatch.Progress
	// overlayFailed is set when Redis could not be read: items are MongoDB's alone.
	overlayFailed bool
}

// storeError turns any Store error into a 503 for the client: MongoDB is
// required for every answer.
func (r *reader) storeError(err error) error {
	r.metrics.mongoErrors.Inc()
	return &keepwatch.Error{Code: keepwatch.EUNAVAILABLE, Message: "the progress store is unavailable, retry later", RetryAfter: 1, Err: err}
}

// loadPending reads the user's pending entries; on failure it counts the error
// and reports it, and the caller answers from MongoDB alone.
func (r *reader) loadPending(ctx context.Context, userID string) ([]keepwatch.Progress, bool) {
	if r.pending == nil {
		return nil, true
	}
	// A slow Redis must not make reads slow: the overlay is an improvement,
	// not a requirement, so it gets a short deadline of its own.
	ctx, cancel := context.WithTimeout(ctx, r.overlayTimeout)
	defer cancel()
	p, err := r.pending.Pending(ctx, userID)
	if err != nil {
		r.metrics.overlayErrors.Inc()
		return nil, false
	}
	return p, true
}

// keepWatching returns the user's unfinished videos, newest first, at most limit.
func (r *reader) keepWatching(ctx context.Context, userID string, limit int) (result, error) {
	pending, ok := r.loadPending(ctx, userID)
	var also []string
	if len(pending) > 0 {
		also = make([]string, len(pending))
		for i, p := range pending {
			also[i] = p.VideoID
		}
	}
	// Pending entries can hide stored videos (a removal, a finish), so ask
	// for as many more as there are pending entries.
	stored, err := r.store.KeepWatching(ctx, userID, r.threshold, limit+len(pending), also)
	if err != nil {
		return result{}, r.storeError(err)
	}
	items, hit := keepWatchingRow(stored, pending, r.threshold, limit)
	if hit {
		r.metrics.overlayHits.Inc()
	}
	return result{items: items, overlayFailed: !ok}, nil
}

// keepWatchingRow merges pending entries into stored states and keeps the
// unfinished ones, newest first, at most limit. hit reports whether a pending
// entry won over MongoDB.
func keepWatchingRow(stored, pending []keepwatch.Progress, threshold float64, limit int) (items []keepwatch.Progress, hit bool) {
	items, hit = overlay(stored, pending)
	items = slices.DeleteFunc(items, func(p keepwatch.Progress) bool {
		return p.Deleted() || p.Percent >= threshold
	})
	slices.SortFunc(items, newestFirst)
	if len(items) > limit {
		items = items[:limit]
	}
	return items, hit
}

// progress returns the user's progress of videoIDs (distinct, valid), in
// the order asked; videos without progress, or removed, are absent.
func (r *reader) progress(ctx context.Context, userID string, videoIDs []string) (result, error) {
	pending, ok := r.loadPending(ctx, userID)
	// Keep only the pending entries asked about.
	pending = slices.DeleteFunc(pending, func(p keepwatch.Progress) bool {
		return !slices.Contains(videoIDs, p.VideoID)
	})
	stored, err := r.store.Progress(ctx, userID, videoIDs)
	if err != nil {
		return result{}, r.storeError(err)
	}
	merged, hit := overlay(stored, pending)
	if hit {
		r.metrics.overlayHits.Inc()
	}
	// The order asked, so the same question always gets the same bytes (and ETag).
	items := make([]keepwatch.Progress, 0, len(merged))
	for _, id := range videoIDs {
		i := slices.IndexFunc(merged, func(p keepwatch.Progress) bool { return p.VideoID == id })
		if i >= 0 && !merged[i].Deleted() {
			items = append(items, merged[i])
		}
	}
	return result{items: items, overlayFailed: !ok}, nil
}

// overlay merges pending entries into stored states, the newest state of
// each video winning (keepwatch.State.Compare). hit reports whether any
// pending entry won. stored is reused.
func overlay(stored, pending []keepwatch.Progress) (merged []keepwatch.Progress, hit bool) {
	merged = stored
	for _, p := range pending {
		// A user has a handful of pending entries and at most a few hundred
		// stored ones here: a linear scan beats building a map.
		i := slices.IndexFunc(merged, func(s keepwatch.Progress) bool { return s.VideoID == p.VideoID })
		switch {
		case i < 0:
			merged = append(merged, p)
			hit = true
		case p.Newer(merged[i].State):
			merged[i].State = p.State
			hit = true
		}
	}
	return merged, hit
}

// newestFirst orders by event time, newest first, then by video id, so that
// equal times still give the same bytes (and ETag) on every request.
func newestFirst(a, b keepwatch.Progress) int {
	if c := cmp.Compare(b.EventTime, a.EventTime); c != 0 {
		return c
	}
	return cmp.Compare(a.VideoID, b.VideoID)
}
