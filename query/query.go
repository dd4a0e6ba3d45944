// Package query is the read side of keepwatch: the HTTP API frontends call to
// draw the keep-watching row and progress bars, and the export of a user's
// data.
//
// Answers come from MongoDB (through Store) merged with the user's entries
// still pending in the Redis buffer (through Pending), newest state winning per
// video, so progress posted a moment ago shows at once, long before the flush
// writes it. Redis is optional for an answer (without it the answer is
// MongoDB's alone, and a header says so); MongoDB is not (503).
//
// The rules (keepwatch.Rules) decide here, at read time, what is finished
// and what is worth resuming, and the user's erase (from either store) hides
// everything at or before it, so a change of rules or an erase shows at once.
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
	// Row calls visit with the user's states that may belong in keep
	// watching by f, newest event time first, until visit returns false;
	// the server sends them batch at a time. It returns how many states it
	// read.
	Row(ctx context.Context, userID string, f keepwatch.RowFilter, batch int, visit func(keepwatch.Progress) bool) (int, error)
	// Progress returns the user's states of videoIDs, and the user's erase
	// (video id "") when there is one; videos with none are absent.
	Progress(ctx context.Context, userID string, videoIDs []string) ([]keepwatch.Progress, error)
}

// Pending reads the user's entries still pending in the write buffer, their
// pending erase (video id "") included. Errors wrap keepwatch.ErrUnavailable
// when the buffer cannot be reached.
type Pending interface {
	Pending(ctx context.Context, userID string) ([]keepwatch.Progress, error)
}

// reader answers the questions of the API from a Store and an optional
// Pending overlay. It knows nothing of HTTP.
type reader struct {
	store          Store
	pending        Pending // nil: overlay off
	rules          keepwatch.Rules
	maxAge         time.Duration // 0: none
	now            func() time.Time
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

// after is the event time a state must be newer than to show in keep
// watching: the age limit's, or the user's erase when it is later.
func (r *reader) after(erase int64) int64 {
	if r.maxAge <= 0 {
		return erase
	}
	return max(erase, r.now().UnixMilli()-r.maxAge.Milliseconds()-1)
}

// keepWatching returns the user's keep-watching row, newest first, at most
// limit items; grouped, one per series: its most recently watched episode
// that belongs in the row.
//
// MongoDB's candidates are read newest first along the row index and merged
// with the pending ones as they come, and reading stops once the row is
// full, so the documents read are those the row shows or skips (episodes of
// a series already shown, videos the rules drop), never the user's history.
func (r *reader) keepWatching(ctx context.Context, userID string, limit int, group bool) (result, error) {
	pending, ok := r.loadPending(ctx, userID)
	videos := videoIDs(pending)
	// The stored states of the pending videos, to know which state is
	// newer, and the user's erase.
	stored, err := r.store.Progress(ctx, userID, videos)
	if err != nil {
		return result{}, r.storeError(err)
	}
	merged, erase, hit := overlay(stored, pending)
	after := r.after(erase)
	m := newRowMerger(newRow(r.rules, after, limit, group), merged, videos)
	read, err := r.store.Row(ctx, userID, r.rules.Filter(after), limit+1, m.offer)
	r.metrics.rowRead.Observe(float64(read))
	if err != nil {
		return result{}, r.storeError(err)
	}
	if hit {
		r.metrics.overlayHits.Inc()
	}
	return result{items: m.finish(), overlayFailed: !ok}, nil
}

// rowMerger builds the row from MongoDB's candidates, offered newest first,
// and the merged states of the pending videos, taking from both in order.
type rowMerger struct {
	row     *row
	pending []keepwatch.Progress // newest first, what the row may take
	videos  []string             // the pending videos, whose stored states are stale
}

func newRowMerger(w *row, merged []keepwatch.Progress, videos []string) *rowMerger {
	cands := slices.DeleteFunc(merged, func(p keepwatch.Progress) bool { return !w.rules.InRow(p.State) || p.EventTime <= w.after })
	slices.SortFunc(cands, newestFirst)
	return &rowMerger{row: w, pending: cands, videos: videos}
}

// offer takes MongoDB's next candidate and reports whether the row wants
// more.
func (m *rowMerger) offer(p keepwatch.Progress) bool {
	if slices.Contains(m.videos, p.VideoID) {
		return true // its newest state is among m.pending
	}
	for len(m.pending) > 0 && newestFirst(m.pending[0], p) < 0 {
		if !m.row.add(m.pending[0]) {
			return false
		}
		m.pending = m.pending[1:]
	}
	return m.row.add(p)
}

// finish adds what is left of the pending states and returns the row.
func (m *rowMerger) finish() []keepwatch.Progress {
	for _, p := range m.pending {
		if !m.row.add(p) {
			break
		}
	}
	slices.SortFunc(m.row.items, newestFirst)
	return m.row.items
}

// row collects the keep-watching row from candidates offered newest first.
type row struct {
	rules  keepwatch.Rules
	after  int64
	limit  int
	group  bool
	series []string // the series shown; a row holds at most 100
	items  []keepwatch.Progress
}

func newRow(rules keepwatch.Rules, after int64, limit int, group bool) *row {
	return &row{rules: rules, after: after, limit: limit, group: group, items: make([]keepwatch.Progress, 0, limit)}
}

// add offers p, the newest candidate not offered yet, and reports whether
// the row wants more.
func (w *row) add(p keepwatch.Progress) bool {
	if len(w.items) >= w.limit {
		return false
	}
	if !w.rules.InRow(p.State) || p.EventTime <= w.after {
		return true
	}
	if w.group && p.SeriesID != "" {
		if slices.Contains(w.series, p.SeriesID) {
			return true // an older episode of a series already shown
		}
		w.series = append(w.series, p.SeriesID)
	}
	w.items = append(w.items, p)
	return len(w.items) < w.limit
}

// progress returns the user's progress of videoIDs (distinct, valid), in
// the order asked; videos without progress, removed or erased, are absent.
func (r *reader) progress(ctx context.Context, userID string, videoIDs []string) (result, error) {
	pending, ok := r.loadPending(ctx, userID)
	// Keep only the pending entries asked about, and the erase.
	pending = slices.DeleteFunc(pending, func(p keepwatch.Progress) bool {
		return p.VideoID != "" && !slices.Contains(videoIDs, p.VideoID)
	})
	stored, err := r.store.Progress(ctx, userID, videoIDs)
	if err != nil {
		return result{}, r.storeError(err)
	}
	merged, erase, hit := overlay(stored, pending)
	if hit {
		r.metrics.overlayHits.Inc()
	}
	// The order asked, so the same question always gets the same bytes (and ETag).
	items := make([]keepwatch.Progress, 0, len(merged))
	for _, id := range videoIDs {
		i := slices.IndexFunc(merged, func(p keepwatch.Progress) bool { return p.VideoID == id })
		if i >= 0 && !merged[i].Deleted() && merged[i].EventTime > erase {
			items = append(items, merged[i])
		}
	}
	return result{items: items, overlayFailed: !ok}, nil
}

// overlay merges pending entries into stored states, the newest state of
// each video winning (keepwatch.State.Compare), and takes the user's erase
// out of both: erase is the event time of the newest (-1: none), and
// nothing at or before it counts any more. hit reports whether any pending
// entry won. stored is reused.
func overlay(stored, pending []keepwatch.Progress) (merged []keepwatch.Progress, erase int64, hit bool) {
	erase = -1
	merged = stored[:0]
	for _, s := range stored {
		if s.VideoID == "" {
			erase = max(erase, s.EventTime)
			continue
		}
		merged = append(merged, s)
	}
	for _, p := range pending {
		if p.VideoID == "" {
			erase = max(erase, p.EventTime)
			continue
		}
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
	return merged, erase, hit
}

// videoIDs returns the video ids of ps, without the erase's "".
func videoIDs(ps []keepwatch.Progress) []string {
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		if p.VideoID != "" {
			out = append(out, p.VideoID)
		}
	}
	return out
}

// newestFirst orders by event time, newest first, then by video id, so that
// equal times still give the same bytes (and ETag) on every request.
func newestFirst(a, b keepwatch.Progress) int {
	if c := cmp.Compare(b.EventTime, a.EventTime); c != 0 {
		return c
	}
	return cmp.Compare(a.VideoID, b.VideoID)
}
