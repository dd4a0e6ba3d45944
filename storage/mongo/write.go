package mongo

import (
	"context"
	"errors"
	"fmt"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/topology"

	"github.com/keepwatch/keepwatch"
)

// DefaultWriteChunk is the number of statements per bulk write when
// Options.WriteChunk is 0. FerretDB 1.24 hangs for good on one update command
// with about 100 statements that match existing documents (50 on its
// PostgreSQL backend); 40 stays clear of that and costs MongoDB little.
const DefaultWriteChunk = 40

// WriteProgress applies each state to its progress document, keeping the
// newest: one conditional upsert per entry,
//
//	filter {_id}, update {$max: {s: state}, $setOnInsert: {u, v}}, upsert,
//
// sent as unordered bulk writes of at most the configured chunk size. The
// update cannot fail on a stale state (it just leaves the document alone),
// needs no pipeline and no transaction, and is idempotent, so any chunk may be
// retried. A stale entry is counted in Stale, not as an error.
//
// When a bulk reports write errors, its chunk is retried one statement at a
// time so that only the documents that fail on their own are reported in
// Failed (FerretDB stops an unordered bulk at the first error and reports it
// at index 0, so the bulk's own indexes cannot be trusted).
//
// The error is non-nil, and wraps keepwatch.ErrUnavailable, when the server
// could not be reached, had no primary or did not answer in time; then any
// part of the call may have been applied, and retrying the whole call is safe.
// Other errors (the server refusing the whole command) are returned as they
// are.
func (s *Store) WriteProgress(ctx context.Context, entries []keepwatch.Progress) (keepwatch.WriteResult, error) {
	var res keepwatch.WriteResult
	coll := s.db.Collection(ProgressCollection)
	models := make([]mongo.WriteModel, 0, min(len(entries), s.chunk))
	for start := 0; start < len(entries); start += s.chunk {
		chunk := entries[start:min(start+s.chunk, len(entries))]
		models = models[:0]
		for _, p := range chunk {
			models = append(models, upsertModel(p))
		}
		br, err := coll.BulkWrite(ctx, models, options.BulkWrite().SetOrdered(false))
		if err == nil {
			res.Written += int(br.UpsertedCount + br.ModifiedCount)
			res.Stale += int(br.MatchedCount - br.ModifiedCount)
			continue
		}
		if transient(err) {
			return res, unavailable("write progress", err)
		}
		var bwe mongo.BulkWriteException
		if !errors.As(err, &bwe) || len(bwe.WriteErrors) == 0 {
			// Not attributable to documents (e.g. the command itself
			// was refused).
			return res, fmt.Errorf("write progress: %w", err)
		}
		// Isolate the failing documents: the bulk is idempotent, so
		// replaying its statements one by one is safe. What the bulk did
		// apply counts as written (its partial result), and shows up as
		// stale in the replay, so stale is what remains.
		written := 0
		if br != nil {
			written = int(br.UpsertedCount + br.ModifiedCount)
		}
		failed := 0
		for i, p := range chunk {
			ur, err := s.upsertOne(ctx, coll, p)
			switch {
			case err == nil:
				written += int(ur.UpsertedCount + ur.ModifiedCount)
			case transient(err):
				return res, unavailable("write progress", err)
			default:
				failed++
				res.Failed = append(res.Failed, keepwatch.DocError{Index: start + i, Err: err})
			}
		}
		written = min(written, len(chunk)-failed)
		res.Written += written
		res.Stale += len(chunk) - failed - written
	}
	return res, nil
}

// upsertOne writes one entry. A duplicate key error is retried once: on _id
// it means a concurrent upsert of the same document inserted it first
// (MongoDB retries that itself, FerretDB does not), and the retry then
// updates it; on another unique index the retry fails the same way, and that
// failure is permanent. (FerretDB does not name the index in the error, so
// the retry is what tells the two apart.)
func (s *Store) upsertOne(ctx context.Context, coll *mongo.Collection, p keepwatch.Progress) (*mongo.UpdateResult, error) {
	m := upsertModel(p)
	ur, err := coll.UpdateOne(ctx, m.Filter, m.Update, options.UpdateOne().SetUpsert(true))
	if err != nil && mongo.IsDuplicateKeyError(err) {
		ur, err = coll.UpdateOne(ctx, m.Filter, m.Update, options.UpdateOne().SetUpsert(true))
	}
	return ur, err
}

func upsertModel(p keepwatch.Progress) *mongo.UpdateOneModel {
	return mongo.NewUpdateOneModel().
		SetFilter(bson.D{{Key: "_id", Value: keepwatch.ID(p.UserID, p.VideoID)}}).
		SetUpdate(bson.D{
			{Key: "$max", Value: bson.D{{Key: "s", Value: toStateDoc(p.State)}}},
			{Key: "$setOnInsert", Value: bson.D{{Key: "u", Value: p.UserID}, {Key: "v", Value: p.VideoID}}},
		}).
		SetUpsert(true)
}

// Server error codes after which the same write may succeed later: the
// server is shutting down, stepping down, electing, or timed out.
var transientCodes = []int{
	6,     // HostUnreachable
	7,     // HostNotFound
	50,    // MaxTimeMSExpired
	64,    // WriteConcernFailed (wtimeout: the write may yet replicate)
	89,    // NetworkTimeout
	91,    // ShutdownInProgress
	112,   // WriteConflict
	189,   // PrimarySteppedDown
	262,   // ExceededTimeLimit
	9001,  // SocketException
	10107, // NotWritablePrimary
	11600, // InterruptedAtShutdown
	11602, // InterruptedDueToReplStateChange
	13435, // NotPrimaryNoSecondaryOk
	13436, // NotPrimaryOrSecondary
}

// transient reports whether err says MongoDB is unreachable or busy rather
// than that the write is wrong: network errors, timeouts, server selection,
// no writable primary, a write concern not (yet) satisfied.
func transient(err error) bool {
	switch {
	case err == nil:
		return false
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, mongo.ErrClientDisconnected),
		mongo.IsNetworkError(err), mongo.IsTimeout(err),
		errors.As(err, new(topology.ServerSelectionError)):
		return true
	}
	var bwe mongo.BulkWriteException
	if errors.As(err, &bwe) && len(bwe.WriteErrors) == 0 && bwe.WriteConcernError != nil {
		// Applied on the primary, not yet acknowledged by enough members.
		return true
	}
	var we mongo.WriteException
	if errors.As(err, &we) && len(we.WriteErrors) == 0 && we.WriteConcernError != nil {
		return true
	}
	var se mongo.ServerError
	if errors.As(err, &se) {
		if se.HasErrorLabel("RetryableWriteError") || se.HasErrorLabel("NetworkError") {
			return true
		}
		for _, c := range transientCodes {
			if se.HasErrorCode(c) {
				return true
			}
		}
	}
	return false
}

func unavailable(op string, err error) error {
	return fmt.Errorf("%s: %w: %w", op, keepwatch.ErrUnavailable, err)
}
