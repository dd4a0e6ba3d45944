package mongo

import (
	"context"
	"errors"
	"fmt"
	"slices"

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
//	filter {_id}, update {$max: {s: state, exp: expiry}, $setOnInsert: {u, v}}, upsert,
//
// sent as unordered bulk writes of at most the configured chunk size. The
// update cannot fail on a stale state (it just leaves the document alone),
// needs no pipeline and no transaction, and is idempotent, so any chunk may be
// retried. A stale entry is counted in Stale, not as an error.
//
// A user's erase (keepwatch.KindErased, video id "") is applied first: its
// tombstone is written with the same $max, then everything of the user at or
// before it is deleted, the user's dead-letter entries included (see
// EraseUser). No entry at or before its user's tombstone is left behind, even
// when an erase runs concurrently: entries the tombstones cover are skipped
// (Stale), and after writing the writer reads the tombstones again and
// deletes what it wrote under one that appeared meanwhile. Since an erase
// writes its tombstone before it deletes, either its delete comes after this
// write, or this second look sees the tombstone.
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
	var erased []int
	users := map[string]struct{}{}
	for i, p := range entries {
		if p.Erased() {
			erased = append(erased, i)
			continue
		}
		users[p.UserID] = struct{}{}
	}
	// Tombstones first: from then on nothing older of their users can be
	// written to stay (see EraseUser).
	for _, i := range erased {
		changed, err := s.writeTombstone(ctx, entries[i].UserID, entries[i].EventTime)
		switch {
		case err == nil && changed:
			res.Written++
		case err == nil:
			res.Stale++
		case transient(err):
			return res, unavailable("write progress: erase", err)
		default:
			res.Failed = append(res.Failed, keepwatch.DocError{Index: i, Err: err})
		}
	}
	tombs, err := s.tombstones(ctx, keysOf(users))
	if err != nil {
		return res, fmt.Errorf("write progress: %w", err)
	}
	var todo []int
	for i, p := range entries {
		if p.Erased() {
			continue
		}
		if t, ok := tombs[p.UserID]; ok && p.EventTime <= t {
			res.Stale++
			continue
		}
		todo = append(todo, i)
	}
	if s.afterCheck != nil {
		s.afterCheck()
	}
	if err := s.upsertAll(ctx, coll, entries, todo, &res); err != nil {
		return res, err
	}
	if err := s.recheck(ctx, entries, todo, &res); err != nil {
		return res, err
	}
	for _, i := range erased {
		if slices.ContainsFunc(res.Failed, func(f keepwatch.DocError) bool { return f.Index == i }) {
			continue
		}
		if _, err := s.eraseAfterTombstone(ctx, entries[i].UserID, entries[i].EventTime); err != nil {
			return res, fmt.Errorf("write progress: %w", err)
		}
	}
	return res, nil
}

// upsertAll writes entries[todo] in chunks (see WriteProgress).
func (s *Store) upsertAll(ctx context.Context, coll *mongo.Collection, entries []keepwatch.Progress, todo []int, res *keepwatch.WriteResult) error {
	models := make([]mongo.WriteModel, 0, min(len(todo), s.chunk))
	for start := 0; start < len(todo); start += s.chunk {
		chunk := todo[start:min(start+s.chunk, len(todo))]
		models = models[:0]
		for _, i := range chunk {
			models = append(models, s.upsertModel(entries[i]))
		}
		br, err := coll.BulkWrite(ctx, models, options.BulkWrite().SetOrdered(false))
		if err == nil {
			res.Written += int(br.UpsertedCount + br.ModifiedCount)
			res.Stale += int(br.MatchedCount - br.ModifiedCount)
			continue
		}
		if transient(err) {
			return unavailable("write progress", err)
		}
		var bwe mongo.BulkWriteException
		if !errors.As(err, &bwe) || len(bwe.WriteErrors) == 0 {
			// Not attributable to documents (e.g. the command itself
			// was refused).
			return fmt.Errorf("write progress: %w", err)
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
		for _, i := range chunk {
			ur, err := s.upsertOne(ctx, coll, entries[i])
			switch {
			case err == nil:
				written += int(ur.UpsertedCount + ur.ModifiedCount)
			case transient(err):
				return unavailable("write progress", err)
			default:
				failed++
				res.Failed = append(res.Failed, keepwatch.DocError{Index: i, Err: err})
			}
		}
		written = min(written, len(chunk)-failed)
		res.Written += written
		res.Stale += len(chunk) - failed - written
	}
	return nil
}

// recheck is the writer's second look at the tombstones of the users it
// wrote entries[todo] of: what it wrote at or before a tombstone that
// appeared meanwhile is deleted, and counted stale instead of written.
func (s *Store) recheck(ctx context.Context, entries []keepwatch.Progress, todo []int, res *keepwatch.WriteResult) error {
	if len(todo) == 0 {
		return nil
	}
	users := map[string]struct{}{}
	for _, i := range todo {
		users[entries[i].UserID] = struct{}{}
	}
	tombs, err := s.tombstones(ctx, keysOf(users))
	if err != nil {
		return fmt.Errorf("write progress: look at the tombstones again: %w", err)
	}
	covered := map[string][]string{}
	for _, i := range todo {
		p := entries[i]
		if t, ok := tombs[p.UserID]; ok && p.EventTime <= t {
			covered[p.UserID] = append(covered[p.UserID], keepwatch.ID(p.UserID, p.VideoID))
		}
	}
	for user, ids := range covered {
		dr, err := s.db.Collection(ProgressCollection).DeleteMany(ctx, bson.D{
			{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}},
			{Key: "s.t", Value: bson.D{{Key: "$lte", Value: tombs[user]}}},
		})
		if err != nil {
			return opError("write progress: delete what an erase covers", err)
		}
		n := min(int(dr.DeletedCount), res.Written)
		res.Written -= n
		res.Stale += n
	}
	return nil
}

func keysOf(m map[string]struct{}) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// upsertOne writes one entry. A duplicate key error is retried once: on _id
// it means a concurrent upsert of the same document inserted it first
// (MongoDB retries that itself, FerretDB does not), and the retry then
// updates it; on another unique index the retry fails the same way, and that
// failure is permanent. (FerretDB does not name the index in the error, so
// the retry is what tells the two apart.)
func (s *Store) upsertOne(ctx context.Context, coll *mongo.Collection, p keepwatch.Progress) (*mongo.UpdateResult, error) {
	m := s.upsertModel(p)
	ur, err := coll.UpdateOne(ctx, m.Filter, m.Update, options.UpdateOne().SetUpsert(true))
	if err != nil && mongo.IsDuplicateKeyError(err) {
		ur, err = coll.UpdateOne(ctx, m.Filter, m.Update, options.UpdateOne().SetUpsert(true))
	}
	return ur, err
}

func (s *Store) upsertModel(p keepwatch.Progress) *mongo.UpdateOneModel {
	return mongo.NewUpdateOneModel().
		SetFilter(bson.D{{Key: "_id", Value: keepwatch.ID(p.UserID, p.VideoID)}}).
		SetUpdate(s.maxUpdate(p)).
		SetUpsert(true)
}

// maxUpdate is the newest-wins update of p's document. exp takes the
// largest expiry any write gave it, so a document never expires before its
// newest state is Retention old.
func (s *Store) maxUpdate(p keepwatch.Progress) bson.D {
	set := bson.D{{Key: "s", Value: toStateDoc(p.State)}}
	if exp := s.expiry(p.EventTime); !exp.IsZero() {
		set = append(set, bson.E{Key: "exp", Value: exp})
	}
	return bson.D{
		{Key: "$max", Value: set},
		{Key: "$setOnInsert", Value: bson.D{{Key: "u", Value: p.UserID}, {Key: "v", Value: p.VideoID}}},
	}
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
