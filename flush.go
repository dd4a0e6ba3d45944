package keepwatch

import (
	"fmt"
	"time"
)

// This file holds what passes between the write buffer, the flusher and the
// progress store: a claimed batch, the outcome of writing it, and the dead
// letters of what could not be written. The flusher (command/flush) declares
// the interfaces it needs in these terms; the storage adapters implement them.

// Claim is a leased batch of one buffer shard's pending entries. While the
// lease lasts no other claim gets these entries; the flusher renews it while
// it writes the batch, and releases it when done. A flusher that dies leaves
// the lease to expire, and the entries are claimed again.
type Claim struct {
	// Shard is the buffer shard the entries come from.
	Shard int
	// Token tells this claim from every other claim of the same entries. A
	// claim whose lease expired and whose entries were claimed again has lost
	// them: renewing or releasing it leaves the new claim's entries alone.
	Token string
	// Entries are the claimed entries, with the values they had when claimed.
	Entries []Progress
	// Failures[i] is what Entries[i] went through before this claim: every
	// earlier claim of it that ended without the entry written or
	// dead-lettered, because the write was refused or because its flusher
	// died with the claim. The buffer keeps the count, so a flusher that
	// keeps dying on one batch still ends in a dead letter.
	Failures []Failures
	// NextLeaseEnd is when the soonest lease among the shard's other claims
	// ends, as seen when this claim was made; zero when there was none. If
	// that claim's flusher died, its entries are due again from then on.
	NextLeaseEnd time.Time
}

// Failures counts the failed attempts of one entry, across claims and
// flusher restarts.
type Failures struct {
	// Count is the number of failed attempts: writes refused by the store,
	// and claims whose flusher died before releasing them (one each).
	// MongoDB being unreachable never counts.
	Count int
	// Since is when the first of them started; zero when Count is 0.
	Since time.Time
}

// WriteResult counts the outcome of writing a batch of progress.
type WriteResult struct {
	// Written is how many documents were inserted or changed.
	Written int
	// Stale is how many were skipped because the store already held the same
	// or a newer state.
	Stale int
	// Failed lists the documents the store refused for good (validation,
	// too large, a unique index other than the identity). Retrying them
	// unchanged fails again; they belong in the dead-letter store.
	Failed []DocError
}

// DocError is a permanent failure of one document of a batch write.
type DocError struct {
	// Index is the position of the document in the batch.
	Index int
	Err   error
}

func (e DocError) Error() string { return fmt.Sprintf("document %d: %v", e.Index, e.Err) }

// DeadLetter is a batch of progress entries the flusher could not write: the
// documents the store refused for good, or a batch that kept failing past
// the bound. Operators list, inspect, replay or discard them
// (`keepwatch replay`).
type DeadLetter struct {
	// ID is assigned by the store (24 hex digits, ordered by creation).
	ID      string
	Entries []DeadEntry
	// Error is the (first) reason of the failure.
	Error string
	// Attempts counts the writes tried: the flusher's, then every replay.
	Attempts     int
	FirstFailure time.Time
	LastFailure  time.Time
}

// DeadEntry is one entry of a dead letter with its own error, when the
// store gave one.
type DeadEntry struct {
	Progress
	Error string
}

// DeadLetterSummary is a dead letter without its entries, for listings.
type DeadLetterSummary struct {
	ID           string
	Count        int
	Error        string
	Attempts     int
	FirstFailure time.Time
	LastFailure  time.Time
}
