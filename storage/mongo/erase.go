package mongo

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/keepwatch/keepwatch"
)

// EraseResult says what an erase removed where.
type EraseResult struct {
	// Documents is how many progress documents it deleted.
	Documents int
	// DeadLetterEntries is how many entries it took out of dead letters,
	// and DeadLetters how many dead letters it deleted because none of
	// their entries was left.
	DeadLetterEntries int
	DeadLetters       int
}

// EraseUser erases everything keepwatch holds in MongoDB of the user at or
// before the event time at (ms): it writes the user's tombstone (newest
// erase winning), then deletes their progress documents and dead-letter
// entries it covers. Progress newer than at is kept. Writing the tombstone
// before deleting is what keeps a concurrent writer from leaving anything
// older behind (see WriteProgress). It is idempotent; errors wrap
// keepwatch.ErrUnavailable when MongoDB is unreachable, and retrying is safe.
func (s *Store) EraseUser(ctx context.Context, userID string, at int64) (EraseResult, error) {
	if _, err := s.writeTombstone(ctx, userID, at); err != nil {
		return EraseResult{}, opError("erase: write the tombstone", err)
	}
	return s.eraseAfterTombstone(ctx, userID, at)
}

// eraseAfterTombstone deletes what the user's tombstone at covers, once it
// is written.
func (s *Store) eraseAfterTombstone(ctx context.Context, userID string, at int64) (EraseResult, error) {
	var res EraseResult
	dr, err := s.db.Collection(ProgressCollection).DeleteMany(ctx, bson.D{
		{Key: "u", Value: userID},
		{Key: "s.t", Value: bson.D{{Key: "$lte", Value: at}}},
		{Key: "_id", Value: bson.D{{Key: "$ne", Value: keepwatch.ID(userID, "")}}},
	})
	if err != nil {
		return res, opError("erase: delete progress", err)
	}
	res.Documents = int(dr.DeletedCount)
	res.DeadLetterEntries, res.DeadLetters, err = s.purgeDeadLetters(ctx, userID, at)
	return res, err
}

// writeTombstone records the user's erase at event time at, keeping the
// newest; changed is false when the same or a newer erase was there.
func (s *Store) writeTombstone(ctx context.Context, userID string, at int64) (changed bool, err error) {
	ur, err := s.upsertOne(ctx, s.db.Collection(ProgressCollection),
		keepwatch.Progress{UserID: userID, State: keepwatch.EraseState(at)})
	if err != nil {
		return false, err
	}
	return ur.UpsertedCount+ur.ModifiedCount > 0, nil
}

// tombstones returns the event time of each of the users' erases, for the
// users that have one.
func (s *Store) tombstones(ctx context.Context, users []string) (map[string]int64, error) {
	out := map[string]int64{}
	if len(users) == 0 {
		return out, nil
	}
	ids := make(bson.A, len(users))
	for i, u := range users {
		ids[i] = keepwatch.ID(u, "")
	}
	cur, err := s.db.Collection(ProgressCollection).Find(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}},
		options.Find().SetProjection(bson.D{{Key: "u", Value: 1}, {Key: "s.t", Value: 1}}))
	if err != nil {
		return nil, opError("read tombstones", err)
	}
	defer cur.Close(context.WithoutCancel(ctx))
	for cur.Next(ctx) {
		u, ok1 := cur.Current.Lookup("u").StringValueOK()
		t, ok2 := cur.Current.Lookup("s", "t").AsInt64OK()
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("read tombstones: malformed tombstone %s", cur.Current)
		}
		out[u] = t
	}
	if err := cur.Err(); err != nil {
		return nil, opError("read tombstones", err)
	}
	return out, nil
}

// purgeTries bounds the compare-and-swap rounds of one dead letter's purge;
// each lost round means another writer changed that dead letter meanwhile.
const purgeTries = 16

// purgeDeadLetters takes the user's entries at or before at out of every
// dead letter, and deletes the dead letters left empty. It returns how many
// entries and dead letters it removed.
//
// FerretDB has no conditional $pull, so each dead letter is rewritten with a
// compare-and-swap on its entries: the update applies only if the entries are
// still those read, and is tried again on the fresh ones otherwise, so a
// concurrent replay or purge is never undone.
func (s *Store) purgeDeadLetters(ctx context.Context, userID string, at int64) (entries, letters int, err error) {
	coll := s.db.Collection(DeadLetterCollection)
	cur, err := coll.Find(ctx, bson.D{{Key: "entries.u", Value: userID}}, options.Find().SetProjection(bson.D{{Key: "_id", Value: 1}}))
	if err != nil {
		return 0, 0, opError("erase: find dead letters", err)
	}
	var ids []bson.ObjectID
	for cur.Next(ctx) {
		if id, ok := cur.Current.Lookup("_id").ObjectIDOK(); ok {
			ids = append(ids, id)
		}
	}
	if err := cur.Err(); err != nil {
		_ = cur.Close(context.WithoutCancel(ctx))
		return 0, 0, opError("erase: find dead letters", err)
	}
	_ = cur.Close(context.WithoutCancel(ctx))
	for _, id := range ids {
		n, gone, err := s.purgeDeadLetter(ctx, coll, id, userID, at)
		if err != nil {
			return entries, letters, err
		}
		entries += n
		if gone {
			letters++
		}
	}
	return entries, letters, nil
}

// purgeDeadLetter is purgeDeadLetters for one dead letter.
func (s *Store) purgeDeadLetter(ctx context.Context, coll *mongo.Collection, id bson.ObjectID, userID string, at int64) (removed int, gone bool, err error) {
	for range purgeTries {
		raw, err := coll.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Raw()
		if errors.Is(err, mongo.ErrNoDocuments) {
			return 0, false, nil
		}
		if err != nil {
			return 0, false, opError("erase: read dead letter "+id.Hex(), err)
		}
		old := raw.Lookup("entries")
		arr, ok := old.ArrayOK()
		if !ok {
			return 0, false, fmt.Errorf("erase: dead letter %s has no entries array", id.Hex())
		}
		vals, err := arr.Values()
		if err != nil {
			return 0, false, fmt.Errorf("erase: dead letter %s: %w", id.Hex(), err)
		}
		keep := bson.A{}
		for _, v := range vals {
			d, ok := v.DocumentOK()
			if !ok {
				return 0, false, fmt.Errorf("erase: dead letter %s holds an entry that is not a document", id.Hex())
			}
			u, _ := d.Lookup("u").StringValueOK()
			t, okT := d.Lookup("s", "t").AsInt64OK()
			if u == userID && okT && t <= at {
				continue
			}
			keep = append(keep, d)
		}
		n := len(vals) - len(keep)
		if n == 0 {
			return 0, false, nil
		}
		filter := bson.D{{Key: "_id", Value: id}, {Key: "entries", Value: old}}
		var matched int64
		if len(keep) == 0 {
			dr, err := coll.DeleteOne(ctx, filter)
			if err != nil {
				return 0, false, opError("erase: delete dead letter "+id.Hex(), err)
			}
			matched = dr.DeletedCount
		} else {
			ur, err := coll.UpdateOne(ctx, filter, bson.D{{Key: "$set", Value: bson.D{
				{Key: "entries", Value: keep}, {Key: "n", Value: len(keep)},
			}}})
			if err != nil {
				return 0, false, opError("erase: update dead letter "+id.Hex(), err)
			}
			matched = ur.MatchedCount
		}
		if matched > 0 {
			return n, len(keep) == 0, nil
		}
		// Changed since it was read: read it again.
	}
	return 0, false, fmt.Errorf("erase: dead letter %s kept changing under %d tries; run the erase again", id.Hex(), purgeTries)
}

// purgeCovered purges the dead-letter entries of entries' users that their
// tombstones cover: the second look of a dead-letter write, for an erase
// that ran while it was being written (see WriteProgress).
func (s *Store) purgeCovered(ctx context.Context, entries []keepwatch.Progress) error {
	users := map[string]struct{}{}
	for _, e := range entries {
		users[e.UserID] = struct{}{}
	}
	tombs, err := s.tombstones(ctx, keysOf(users))
	if err != nil {
		return err
	}
	purged := map[string]bool{}
	for _, e := range entries {
		if t, ok := tombs[e.UserID]; ok && e.EventTime <= t && !purged[e.UserID] {
			purged[e.UserID] = true
			if _, _, err := s.purgeDeadLetters(ctx, e.UserID, t); err != nil {
				return err
			}
		}
	}
	return nil
}

// SweepExpired deletes up to max progress documents whose exp has passed at
// now, the erase tombstones among them, and returns how many it deleted. It
// is the retention where the server has no TTL index (FerretDB), and a
// cheap look along the exp index where it has one. Errors wrap
// keepwatch.ErrUnavailable when MongoDB is unreachable.
func (s *Store) SweepExpired(ctx context.Context, now time.Time, max int) (int, error) {
	coll := s.db.Collection(ProgressCollection)
	expired := bson.D{{Key: "exp", Value: bson.D{{Key: "$lt", Value: now.UTC()}}}}
	ids, err := s.ids(ctx, coll, expired, max)
	if err != nil || len(ids) == 0 {
		return 0, err
	}
	dr, err := coll.DeleteMany(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}, expired[0]})
	if err != nil {
		return 0, opError("sweep expired progress", err)
	}
	return int(dr.DeletedCount), nil
}

// BackfillExpiry gives up to max documents written before expiry existed
// (or while Retention was 0) their exp, and returns how many it updated, so
// that retention reaches them too.
func (s *Store) BackfillExpiry(ctx context.Context, max int) (int, error) {
	if s.retention <= 0 {
		return 0, nil
	}
	coll := s.db.Collection(ProgressCollection)
	// exp: null matches a missing exp, along the exp index on MongoDB.
	cur, err := coll.Find(ctx, bson.D{{Key: "exp", Value: nil}},
		options.Find().SetProjection(bson.D{{Key: "s.t", Value: 1}}).SetLimit(int64(max)))
	if err != nil {
		return 0, opError("backfill expiry", err)
	}
	var models []mongo.WriteModel
	for cur.Next(ctx) {
		id := cur.Current.Lookup("_id")
		t, ok := cur.Current.Lookup("s", "t").AsInt64OK()
		if !ok {
			continue
		}
		models = append(models, mongo.NewUpdateOneModel().
			SetFilter(bson.D{{Key: "_id", Value: id}, {Key: "exp", Value: nil}}).
			SetUpdate(bson.D{{Key: "$max", Value: bson.D{{Key: "exp", Value: s.expiry(t)}}}}))
	}
	err = cur.Err()
	_ = cur.Close(context.WithoutCancel(ctx))
	if err != nil {
		return 0, opError("backfill expiry", err)
	}
	n := 0
	for start := 0; start < len(models); start += s.chunk {
		br, err := coll.BulkWrite(ctx, models[start:min(start+s.chunk, len(models))], options.BulkWrite().SetOrdered(false))
		if err != nil {
			return n, opError("backfill expiry", err)
		}
		n += int(br.ModifiedCount)
	}
	return n, nil
}

// ids returns the _id of up to max documents of coll matching filter.
func (s *Store) ids(ctx context.Context, coll *mongo.Collection, filter bson.D, max int) (bson.A, error) {
	cur, err := coll.Find(ctx, filter, options.Find().SetProjection(bson.D{{Key: "_id", Value: 1}}).SetLimit(int64(max)))
	if err != nil {
		return nil, opError("find expired progress", err)
	}
	defer cur.Close(context.WithoutCancel(ctx))
	var ids bson.A
	for cur.Next(ctx) {
		ids = append(ids, cur.Current.Lookup("_id"))
	}
	if err := cur.Err(); err != nil {
		return nil, opError("find expired progress", err)
	}
	return ids, nil
}
