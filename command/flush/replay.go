package flush

import (
	"context"
	"fmt"

	"github.com/keepwatch/keepwatch"
)

// DeadLetterStore is what replaying needs of the dead-letter store and
// MongoDB.
type DeadLetterStore interface {
	// DeadLetters lists up to limit dead letters (0: all), oldest first.
	DeadLetters(ctx context.Context, limit int) ([]keepwatch.DeadLetterSummary, error)
	// DeadLetter returns one with its entries; ENOTFOUND when there is none.
	DeadLetter(ctx context.Context, id string) (keepwatch.DeadLetter, error)
	// DeleteDeadLetter removes one; ENOTFOUND when there is none.
	DeleteDeadLetter(ctx context.Context, id string) error
	// ReplaceDeadLetterEntries keeps only the entries that still fail.
	ReplaceDeadLetterEntries(ctx context.Context, id string, entries []keepwatch.DeadEntry, errMsg string) error
	// WriteProgress applies states newest-wins (see Store).
	WriteProgress(ctx context.Context, entries []keepwatch.Progress) (keepwatch.WriteResult, error)
}

// Replayer retries dead letters through the same conditional upserts as the
// flusher, so a replayed batch, however old, never rolls a user back: an
// entry older than what MongoDB holds is skipped as stale.
type Replayer struct {
	store DeadLetterStore
	// chunk is how many entries are written between two progress reports.
	chunk int
}

// NewReplayer returns a replayer on store.
func NewReplayer(store DeadLetterStore) *Replayer { return &Replayer{store: store, chunk: 500} }

// ReplayResult counts the outcome of a replay.
type ReplayResult struct {
	DeadLetters int // dead letters fully applied and removed
	Written     int
	Stale       int
	// StillFailing counts the entries the server still refuses; they stay in
	// their dead letter, with their new error and one more attempt.
	StillFailing int
}

// Progress is called after each chunk of a replay with what is done so far
// and the total number of entries (of every dead letter being replayed).
type Progress func(done, total int, so ReplayResult)

// Retry replays one dead letter. Entries written or found stale are dropped
// from it; it is removed once none is left. The error is ENOTFOUND for an
// unknown id, and wraps keepwatch.ErrUnavailable when MongoDB is unreachable
// (the dead letter is then left as it was).
func (r *Replayer) Retry(ctx context.Context, id string, progress Progress) (ReplayResult, error) {
	dl, err := r.store.DeadLetter(ctx, id)
	if err != nil {
		return ReplayResult{}, err
	}
	var res ReplayResult
	if err := r.retry(ctx, dl, &res, 0, len(dl.Entries), progress); err != nil {
		return res, err
	}
	return res, nil
}

// RetryAll replays every dead letter, oldest first, reporting progress
// across all of them. It stops at the first error other than a document that
// still fails.
func (r *Replayer) RetryAll(ctx context.Context, progress Progress) (ReplayResult, error) {
	list, err := r.store.DeadLetters(ctx, 0)
	if err != nil {
		return ReplayResult{}, err
	}
	total := 0
	for _, s := range list {
		total += s.Count
	}
	var res ReplayResult
	done := 0
	for _, s := range list {
		dl, err := r.store.DeadLetter(ctx, s.ID)
		if keepwatch.ErrorCode(err) == keepwatch.ENOTFOUND {
			// Retried or discarded meanwhile by someone else.
			done += s.Count
			continue
		}
		if err != nil {
			return res, err
		}
		if err := r.retry(ctx, dl, &res, done, total, progress); err != nil {
			return res, err
		}
		done += s.Count
	}
	return res, nil
}

func (r *Replayer) retry(ctx context.Context, dl keepwatch.DeadLetter, res *ReplayResult, done, total int, progress Progress) error {
	var still []keepwatch.DeadEntry
	for start := 0; start < len(dl.Entries); start += r.chunk {
		part := dl.Entries[start:min(start+r.chunk, len(dl.Entries))]
		ps := make([]keepwatch.Progress, len(part))
		for i, e := range part {
			ps[i] = e.Progress
		}
		wr, err := r.store.WriteProgress(ctx, ps)
		if err != nil {
			// Written chunks stay written; the dead letter keeps every
			// entry, and replaying them again is harmless.
			return fmt.Errorf("replay dead letter %s: %w", dl.ID, err)
		}
		res.Written += wr.Written
		res.Stale += wr.Stale
		for _, fe := range wr.Failed {
			e := part[fe.Index]
			e.Error = fe.Err.Error()
			still = append(still, e)
		}
		if progress != nil {
			progress(done+start+len(part), total, *res)
		}
	}
	res.StillFailing += len(still)
	if len(still) == 0 {
		if err := r.store.DeleteDeadLetter(ctx, dl.ID); err != nil && keepwatch.ErrorCode(err) != keepwatch.ENOTFOUND {
			return fmt.Errorf("replay dead letter %s: remove it: %w", dl.ID, err)
		}
		res.DeadLetters++
		return nil
	}
	if err := r.store.ReplaceDeadLetterEntries(ctx, dl.ID, still, still[0].Error); err != nil {
		return fmt.Errorf("replay dead letter %s: keep what still fails: %w", dl.ID, err)
	}
	return nil
}
