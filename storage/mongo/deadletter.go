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

// deadLetterDoc is a dead letter as stored.
type deadLetterDoc struct {
	ID           bson.ObjectID  `bson:"_id,omitempty"`
	Entries      []deadEntryDoc `bson:"entries"`
	Count        int            `bson:"n"`
	Error        string         `bson:"error"`
	Attempts     int            `bson:"attempts"`
	FirstFailure time.Time      `bson:"first_failure"`
	LastFailure  time.Time      `bson:"last_failure"`
}

type deadEntryDoc struct {
	U     string   `bson:"u"`
	V     string   `bson:"v"`
	S     stateDoc `bson:"s"`
	Error string   `bson:"error,omitempty"`
}

func (d deadLetterDoc) deadLetter() keepwatch.DeadLetter {
	dl := keepwatch.DeadLetter{
		ID: d.ID.Hex(), Error: d.Error, Attempts: d.Attempts,
		FirstFailure: d.FirstFailure, LastFailure: d.LastFailure,
		Entries: make([]keepwatch.DeadEntry, len(d.Entries)),
	}
	for i, e := range d.Entries {
		dl.Entries[i] = keepwatch.DeadEntry{
			Progress: keepwatch.Progress{UserID: e.U, VideoID: e.V, State: e.S.state()},
			Error:    e.Error,
		}
	}
	return dl
}

// AddDeadLetter stores a dead letter and returns its ID. Zero times are set
// to now. The error wraps keepwatch.ErrUnavailable when MongoDB is
// unreachable: the caller must then keep the entries where they are.
//
// Like WriteProgress, it takes a second look at the tombstones of the
// entries' users once the dead letter is stored, and purges what an erase
// that ran meanwhile covers; if it cannot, it removes the dead letter again
// and fails, so the caller keeps the entries and tries later.
func (s *Store) AddDeadLetter(ctx context.Context, dl keepwatch.DeadLetter) (string, error) {
	now := time.Now().UTC().Truncate(time.Millisecond)
	if dl.FirstFailure.IsZero() {
		dl.FirstFailure = now
	}
	if dl.LastFailure.IsZero() {
		dl.LastFailure = now
	}
	doc := deadLetterDoc{
		Count: len(dl.Entries), Error: dl.Error, Attempts: dl.Attempts,
		FirstFailure: dl.FirstFailure.UTC(), LastFailure: dl.LastFailure.UTC(),
		Entries: make([]deadEntryDoc, len(dl.Entries)),
	}
	for i, e := range dl.Entries {
		doc.Entries[i] = deadEntryDoc{U: e.UserID, V: e.VideoID, S: fromState(e.State), Error: e.Error}
	}
	doc.ID = bson.NewObjectID()
	coll := s.db.Collection(DeadLetterCollection)
	if _, err := coll.InsertOne(ctx, doc); err != nil {
		if transient(err) {
			return "", unavailable("add dead letter", err)
		}
		return "", fmt.Errorf("add dead letter: %w", err)
	}
	if err := s.purgeCovered(ctx, progressOf(dl.Entries)); err != nil {
		_, derr := coll.DeleteOne(context.WithoutCancel(ctx), bson.D{{Key: "_id", Value: doc.ID}})
		return "", errors.Join(fmt.Errorf("add dead letter: %w", err), derr)
	}
	return doc.ID.Hex(), nil
}

func progressOf(es []keepwatch.DeadEntry) []keepwatch.Progress {
	out := make([]keepwatch.Progress, len(es))
	for i, e := range es {
		out[i] = e.Progress
	}
	return out
}

// DeadLetters lists up to limit dead letters (0: all), oldest first, without
// their entries.
func (s *Store) DeadLetters(ctx context.Context, limit int) ([]keepwatch.DeadLetterSummary, error) {
	opts := options.Find().
		SetSort(bson.D{{Key: "first_failure", Value: 1}, {Key: "_id", Value: 1}}).
		SetProjection(bson.D{{Key: "entries", Value: 0}})
	if limit > 0 {
		opts.SetLimit(int64(limit))
	}
	cur, err := s.db.Collection(DeadLetterCollection).Find(ctx, bson.D{}, opts)
	if err != nil {
		return nil, opError("list dead letters", err)
	}
	var docs []deadLetterDoc
	if err := cur.All(ctx, &docs); err != nil {
		return nil, opError("list dead letters", err)
	}
	out := make([]keepwatch.DeadLetterSummary, len(docs))
	for i, d := range docs {
		out[i] = keepwatch.DeadLetterSummary{ID: d.ID.Hex(), Count: d.Count, Error: d.Error, Attempts: d.Attempts,
			FirstFailure: d.FirstFailure, LastFailure: d.LastFailure}
	}
	return out, nil
}

// CountDeadLetters returns how many dead letters are stored.
func (s *Store) CountDeadLetters(ctx context.Context) (int64, error) {
	n, err := s.db.Collection(DeadLetterCollection).CountDocuments(ctx, bson.D{})
	if err != nil {
		return 0, opError("count dead letters", err)
	}
	return n, nil
}

// DeadLetter returns one dead letter with its entries. An unknown or
// malformed id gives a *keepwatch.Error with code ENOTFOUND.
func (s *Store) DeadLetter(ctx context.Context, id string) (keepwatch.DeadLetter, error) {
	oid, err := bson.ObjectIDFromHex(id)
	if err != nil {
		return keepwatch.DeadLetter{}, keepwatch.Errorf(keepwatch.ENOTFOUND, "no dead letter %q", id)
	}
	var d deadLetterDoc
	err = s.db.Collection(DeadLetterCollection).FindOne(ctx, bson.D{{Key: "_id", Value: oid}}).Decode(&d)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return keepwatch.DeadLetter{}, keepwatch.Errorf(keepwatch.ENOTFOUND, "no dead letter %q", id)
	}
	if err != nil {
		return keepwatch.DeadLetter{}, opError("read dead letter "+id, err)
	}
	return d.deadLetter(), nil
}

// DeleteDeadLetter removes a dead letter; ENOTFOUND when there is none.
func (s *Store) DeleteDeadLetter(ctx context.Context, id string) error {
	oid, err := bson.ObjectIDFromHex(id)
	if err != nil {
		return keepwatch.Errorf(keepwatch.ENOTFOUND, "no dead letter %q", id)
	}
	res, err := s.db.Collection(DeadLetterCollection).DeleteOne(ctx, bson.D{{Key: "_id", Value: oid}})
	if err != nil {
		return opError("delete dead letter "+id, err)
	}
	if res.DeletedCount == 0 {
		return keepwatch.Errorf(keepwatch.ENOTFOUND, "no dead letter %q", id)
	}
	return nil
}

// ReplaceDeadLetterEntries records a failed replay: the entries that still
// fail (the others were written) with their errors, the error, one more
// attempt and the time. Then it purges what a tombstone covers, for an erase
// that ran during the replay (see AddDeadLetter).
func (s *Store) ReplaceDeadLetterEntries(ctx context.Context, id string, entries []keepwatch.DeadEntry, errMsg string) error {
	oid, err := bson.ObjectIDFromHex(id)
	if err != nil {
		return keepwatch.Errorf(keepwatch.ENOTFOUND, "no dead letter %q", id)
	}
	docs := make([]deadEntryDoc, len(entries))
	for i, e := range entries {
		docs[i] = deadEntryDoc{U: e.UserID, V: e.VideoID, S: fromState(e.State), Error: e.Error}
	}
	res, err := s.db.Collection(DeadLetterCollection).UpdateOne(ctx,
		bson.D{{Key: "_id", Value: oid}},
		bson.D{
			{Key: "$set", Value: bson.D{
				{Key: "entries", Value: docs}, {Key: "n", Value: len(docs)}, {Key: "error", Value: errMsg},
				{Key: "last_failure", Value: time.Now().UTC().Truncate(time.Millisecond)},
			}},
			{Key: "$inc", Value: bson.D{{Key: "attempts", Value: 1}}},
		})
	if err != nil {
		return opError("update dead letter "+id, err)
	}
	if res.MatchedCount == 0 {
		return keepwatch.Errorf(keepwatch.ENOTFOUND, "no dead letter %q", id)
	}
	if err := s.purgeCovered(ctx, progressOf(entries)); err != nil {
		return fmt.Errorf("update dead letter %s: %w", id, err)
	}
	return nil
}

// opError wraps transient errors with keepwatch.ErrUnavailable.
func opError(op string, err error) error {
	if transient(err) {
		return unavailable(op, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}
