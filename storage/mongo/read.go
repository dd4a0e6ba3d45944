package mongo

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/readpref"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/topology"

	"github.com/keepwatch/keepwatch"
)

// ReadOptions choose which members of a replica set serve reads.
type ReadOptions struct {
	// ReadPreference is a mode name: primary (the default when empty),
	// primaryPreferred, secondary, secondaryPreferred or nearest.
	ReadPreference string
	// MaxStaleness bounds how far behind the primary a secondary may be to
	// serve a read; 0 leaves it unset. MongoDB requires at least 90s, and
	// refuses it with mode primary.
	MaxStaleness time.Duration
}

// ReadPref builds the driver's read preference from o.
func (o ReadOptions) ReadPref() (*readpref.ReadPref, error) {
	name := o.ReadPreference
	if name == "" {
		name = "primary"
	}
	mode, err := readpref.ModeFromString(name)
	if err != nil || !mode.IsValid() {
		return nil, fmt.Errorf("read preference %q: want primary, primaryPreferred, secondary, secondaryPreferred or nearest", name)
	}
	var opts []readpref.Option
	if o.MaxStaleness > 0 {
		opts = append(opts, readpref.WithMaxStaleness(o.MaxStaleness))
	}
	rp, err := readpref.New(mode, opts...)
	if err != nil {
		return nil, fmt.Errorf("read preference %q with max staleness %s: %w", name, o.MaxStaleness, err)
	}
	return rp, nil
}

// Reader reads progress documents with a read preference of its own, so the
// query service can send reads to secondaries while writers stay on the
// primary.
type Reader struct {
	coll        *mongo.Collection
	deadLetters *mongo.Collection
}

// Reader returns a reader of the progress collection with o's read preference.
func (s *Store) Reader(o ReadOptions) (*Reader, error) {
	rp, err := o.ReadPref()
	if err != nil {
		return nil, err
	}
	return &Reader{
		coll:        s.db.Collection(ProgressCollection, options.Collection().SetReadPreference(rp)),
		deadLetters: s.db.Collection(DeadLetterCollection, options.Collection().SetReadPreference(rp)),
	}, nil
}

// rowQuery is the one query behind Row and its explain: the user's progress
// (not removals or erases), newer than f.After, with a percent in
// [f.MinPercent, f.BelowPercent) and not completed, newest first. Every
// condition is on a key of the index {u, s.k, s.t: -1, s.p, s.c}
// (migrations.ProgressRowIndex): MongoDB walks the user's progress keys
// newest first from f.After on, checks s.p and s.c on the keys, and fetches
// only the documents that pass, so finished and removed videos cost an
// index key each, never a document read.
func rowQuery(userID string, f keepwatch.RowFilter) bson.D {
	return bson.D{
		{Key: "u", Value: userID},
		{Key: "s.k", Value: int32(keepwatch.KindProgress)},
		{Key: "s.t", Value: bson.D{{Key: "$gt", Value: f.After}}},
		{Key: "s.p", Value: bson.D{{Key: "$gte", Value: f.MinPercent}, {Key: "$lt", Value: f.BelowPercent}}},
		// $ne, not false: documents written before c existed lack it.
		{Key: "s.c", Value: bson.D{{Key: "$ne", Value: true}}},
	}
}

var rowSort = bson.D{{Key: "s.t", Value: -1}}

// Row calls visit with each of the user's documents that may belong in
// keep watching by f (see rowQuery), newest event time first, until visit
// returns false or none is left. The server sends them batch at a time, so
// the documents read are those visited plus at most a batch. It returns how
// many documents the server sent. Errors wrap keepwatch.ErrUnavailable when
// the server cannot be reached in time.
func (r *Reader) Row(ctx context.Context, userID string, f keepwatch.RowFilter, batch int, visit func(keepwatch.Progress) bool) (int, error) {
	opts := options.Find().SetSort(rowSort).SetBatchSize(int32(max(1, batch)))
	cur, err := r.coll.Find(ctx, rowQuery(userID, f), opts)
	if err != nil {
		return 0, readError("find keep-watching", err)
	}
	defer cur.Close(context.WithoutCancel(ctx))
	read := 0
	for cur.Next(ctx) {
		read++
		p, err := decodeDoc(cur)
		if err != nil {
			return read, fmt.Errorf("find keep-watching: %w", err)
		}
		if !visit(p) {
			// What the last batch brought and nobody looked at was read too.
			return read + cur.RemainingBatchLength(), nil
		}
	}
	if err := cur.Err(); err != nil {
		return read, readError("find keep-watching", err)
	}
	return read, nil
}

// ExplainRow returns the server's explain output (verbosity queryPlanner)
// for the query Row sends, so tests and operators can check which index
// serves it.
func (r *Reader) ExplainRow(ctx context.Context, userID string, f keepwatch.RowFilter) (bson.Raw, error) {
	cmd := bson.D{
		{Key: "explain", Value: bson.D{
			{Key: "find", Value: r.coll.Name()},
			{Key: "filter", Value: rowQuery(userID, f)},
			{Key: "sort", Value: rowSort},
		}},
		{Key: "verbosity", Value: "queryPlanner"},
	}
	raw, err := r.coll.Database().RunCommand(ctx, cmd).Raw()
	if err != nil {
		return nil, readError("explain keep-watching", err)
	}
	return raw, nil
}

// Progress returns the user's documents for videoIDs, and the user's erase
// (video id "", kind keepwatch.KindErased) when there is one, in no
// particular order; videos without a document are absent. Errors wrap
// keepwatch.ErrUnavailable when the server cannot be reached in time.
func (r *Reader) Progress(ctx context.Context, userID string, videoIDs []string) ([]keepwatch.Progress, error) {
	ids := make(bson.A, 0, len(videoIDs)+1)
	ids = append(ids, keepwatch.ID(userID, ""))
	for _, v := range videoIDs {
		ids = append(ids, keepwatch.ID(userID, v))
	}
	cur, err := r.coll.Find(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}})
	if err != nil {
		return nil, readError("find progress", err)
	}
	return decodeAll(ctx, cur, len(ids), "find progress")
}

// ExportProgress calls visit with every document the user has, removals and
// the erase included, newest first, along the index {u, s.t: -1}; it stops at
// visit's first error and returns it. Memory stays constant whatever the
// user's history.
func (r *Reader) ExportProgress(ctx context.Context, userID string, visit func(keepwatch.Progress) error) error {
	cur, err := r.coll.Find(ctx, bson.D{{Key: "u", Value: userID}}, options.Find().SetSort(rowSort).SetBatchSize(256))
	if err != nil {
		return readError("export progress", err)
	}
	defer cur.Close(context.WithoutCancel(ctx))
	for cur.Next(ctx) {
		p, err := decodeDoc(cur)
		if err != nil {
			return fmt.Errorf("export progress: %w", err)
		}
		if err := visit(p); err != nil {
			return err
		}
	}
	if err := cur.Err(); err != nil {
		return readError("export progress", err)
	}
	return nil
}

// ExportDeadLetters calls visit with each of the user's entries in dead
// letters, with the id of its dead letter; it stops at visit's first error
// and returns it.
func (r *Reader) ExportDeadLetters(ctx context.Context, userID string, visit func(id string, e keepwatch.DeadEntry) error) error {
	cur, err := r.deadLetters.Find(ctx, bson.D{{Key: "entries.u", Value: userID}}, options.Find().SetBatchSize(16))
	if err != nil {
		return readError("export dead letters", err)
	}
	defer cur.Close(context.WithoutCancel(ctx))
	for cur.Next(ctx) {
		var d deadLetterDoc
		if err := cur.Decode(&d); err != nil {
			return fmt.Errorf("export dead letters: decode %s: %w", cur.Current.Lookup("_id"), err)
		}
		for _, e := range d.deadLetter().Entries {
			if e.UserID != userID {
				continue
			}
			if err := visit(d.ID.Hex(), e); err != nil {
				return err
			}
		}
	}
	if err := cur.Err(); err != nil {
		return readError("export dead letters", err)
	}
	return nil
}

func decodeAll(ctx context.Context, cur *mongo.Cursor, capacity int, op string) ([]keepwatch.Progress, error) {
	defer cur.Close(context.WithoutCancel(ctx))
	out := make([]keepwatch.Progress, 0, capacity)
	for cur.Next(ctx) {
		p, err := decodeDoc(cur)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", op, err)
		}
		out = append(out, p)
	}
	if err := cur.Err(); err != nil {
		return nil, readError(op, err)
	}
	return out, nil
}

// decodeDoc decodes the cursor's current progress document.
func decodeDoc(cur *mongo.Cursor) (keepwatch.Progress, error) {
	p, err := decodeProgress(cur.Current)
	if err == nil {
		return p, nil
	}
	// Not the shape the writer makes (a document edited by hand?): the
	// driver's reflective decode accepts more and says precisely what is
	// wrong when it cannot.
	var d progressDoc
	if err := cur.Decode(&d); err != nil {
		return p, fmt.Errorf("decode %s: %w", cur.Current.Lookup("_id"), err)
	}
	return d.progress(), nil
}

// decodeProgress reads a progress document of the writer's shape field by
// field: the driver's reflective Decode allocated about 30 times per
// document, on the query side's hot path. Numbers are read whatever their
// BSON numeric type.
func decodeProgress(doc bson.Raw) (keepwatch.Progress, error) {
	var p keepwatch.Progress
	var ok bool
	if p.UserID, ok = doc.Lookup("u").StringValueOK(); !ok {
		return p, errors.New("u is not a string")
	}
	if p.VideoID, ok = doc.Lookup("v").StringValueOK(); !ok {
		return p, errors.New("v is not a string")
	}
	s, ok := doc.Lookup("s").DocumentOK()
	if !ok {
		return p, errors.New("s is not a document")
	}
	t, ok1 := s.Lookup("t").AsInt64OK()
	k, ok2 := s.Lookup("k").AsInt64OK()
	pct, ok3 := s.Lookup("p").AsFloat64OK()
	pos, ok4 := s.Lookup("pos").AsFloat64OK()
	dur, ok5 := s.Lookup("dur").AsFloat64OK()
	if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 {
		return p, fmt.Errorf("s %s lacks a number", s)
	}
	p.State = keepwatch.State{EventTime: t, Kind: keepwatch.Kind(k), Percent: pct, Position: pos, Duration: dur, Episode: keepwatch.Unknown}
	// Absent from documents written before series and completion.
	if v, err := s.LookupErr("c"); err == nil {
		if p.Completed, ok = v.BooleanOK(); !ok {
			return p, fmt.Errorf("s %s: c is not a boolean", s)
		}
	}
	if v, err := s.LookupErr("e"); err == nil {
		if p.Episode, ok = v.AsFloat64OK(); !ok {
			return p, fmt.Errorf("s %s: e is not a number", s)
		}
	}
	if v, err := s.LookupErr("sr"); err == nil {
		if p.SeriesID, ok = v.StringValueOK(); !ok {
			return p, fmt.Errorf("s %s: sr is not a string", s)
		}
	}
	return p, nil
}

// readError wraps keepwatch.ErrUnavailable around the errors that mean the
// server could not be reached or did not answer in time, so the query side
// can answer 503 for them and 500 for anything else (a bug).
func readError(op string, err error) error {
	if mongo.IsNetworkError(err) || mongo.IsTimeout(err) ||
		errors.As(err, new(topology.ServerSelectionError)) ||
		errors.Is(err, context.Canceled) || errors.Is(err, mongo.ErrClientDisconnected) {
		return fmt.Errorf("%s: %w: %w", op, keepwatch.ErrUnavailable, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}
