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
	coll *mongo.Collection
}

// Reader returns a reader of the progress collection with o's read preference.
func (s *Store) Reader(o ReadOptions) (*Reader, error) {
	rp, err := o.ReadPref()
	if err != nil {
		return nil, err
	}
	return &Reader{coll: s.db.Collection(ProgressCollection, options.Collection().SetReadPreference(rp))}, nil
}

// keepWatchingQuery is the one query behind KeepWatching and its explain.
//
// The filter selects the user's unfinished, not deleted videos plus, whatever
// their state, the videos named in also (the caller's pending entries, whose
// stored state must be known to decide which one is newer). It is sorted by
// event time, newest first, so MongoDB walks the index {u: 1, "s.t": -1} and
// stops after limit documents.
//
// Fetching also's documents only when they rank within the limit is enough:
// a document that ranks below limit+len(also) others is older than all of
// them, so a pending entry it would beat is older still and cannot make the
// caller's top limit either.
func keepWatchingQuery(userID string, finishedThreshold float64, also []string) bson.D {
	unfinished := bson.D{
		{Key: "s.k", Value: int32(keepwatch.KindProgress)},
		{Key: "s.p", Value: bson.D{{Key: "$lt", Value: finishedThreshold}}},
	}
	if len(also) == 0 {
		return append(bson.D{{Key: "u", Value: userID}}, unfinished...)
	}
	return bson.D{
		{Key: "u", Value: userID},
		{Key: "$or", Value: bson.A{
			unfinished,
			bson.D{{Key: "v", Value: bson.D{{Key: "$in", Value: also}}}},
		}},
	}
}

var keepWatchingSort = bson.D{{Key: "s.t", Value: -1}}

// KeepWatching returns up to limit of the user's progress documents, newest
// event time first: the unfinished, not deleted ones (percent below
// finishedThreshold) and also those of the videos in also whatever their
// state (see keepWatchingQuery). Errors wrap keepwatch.ErrUnavailable when
// the server cannot be reached in time.
func (r *Reader) KeepWatching(ctx context.Context, userID string, finishedThreshold float64, limit int, also []string) ([]keepwatch.Progress, error) {
	opts := options.Find().SetSort(keepWatchingSort).SetLimit(int64(limit))
	cur, err := r.coll.Find(ctx, keepWatchingQuery(userID, finishedThreshold, also), opts)
	if err != nil {
		return nil, readError("find keep-watching", err)
	}
	return decodeAll(ctx, cur, limit, "find keep-watching")
}

// ExplainKeepWatching returns the server's explain output (verbosity
// queryPlanner) for the query KeepWatching sends, so tests and operators can
// check which index serves it.
func (r *Reader) ExplainKeepWatching(ctx context.Context, userID string, finishedThreshold float64, limit int, also []string) (bson.Raw, error) {
	cmd := bson.D{
		{Key: "explain", Value: bson.D{
			{Key: "find", Value: r.coll.Name()},
			{Key: "filter", Value: keepWatchingQuery(userID, finishedThreshold, also)},
			{Key: "sort", Value: keepWatchingSort},
			{Key: "limit", Value: int64(limit)},
		}},
		{Key: "verbosity", Value: "queryPlanner"},
	}
	raw, err := r.coll.Database().RunCommand(ctx, cmd).Raw()
	if err != nil {
		return nil, readError("explain keep-watching", err)
	}
	return raw, nil
}

// Progress returns the user's documents for videoIDs, in no particular
// order; videos without a document are absent. Errors wrap
// keepwatch.ErrUnavailable when the server cannot be reached in time.
func (r *Reader) Progress(ctx context.Context, userID string, videoIDs []string) ([]keepwatch.Progress, error) {
	if len(videoIDs) == 0 {
		return nil, nil
	}
	var filter bson.D
	if len(videoIDs) == 1 {
		filter = bson.D{{Key: "_id", Value: keepwatch.ID(userID, videoIDs[0])}}
	} else {
		ids := make(bson.A, len(videoIDs))
		for i, v := range videoIDs {
			ids[i] = keepwatch.ID(userID, v)
		}
		filter = bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}}
	}
	cur, err := r.coll.Find(ctx, filter)
	if err != nil {
		return nil, readError("find progress", err)
	}
	return decodeAll(ctx, cur, len(videoIDs), "find progress")
}

func decodeAll(ctx context.Context, cur *mongo.Cursor, capacity int, op string) ([]keepwatch.Progress, error) {
	defer cur.Close(context.WithoutCancel(ctx))
	out := make([]keepwatch.Progress, 0, capacity)
	for cur.Next(ctx) {
		p, err := decodeProgress(cur.Current)
		if err != nil {
			// Not the shape the writer makes (a document edited by hand?):
			// the driver's reflective decode accepts more and says precisely
			// what is wrong when it cannot.
			var d progressDoc
			if err := cur.Decode(&d); err != nil {
				return nil, fmt.Errorf("%s: decode %s: %w", op, cur.Current.Lookup("_id"), err)
			}
			p = d.progress()
		}
		out = append(out, p)
	}
	if err := cur.Err(); err != nil {
		return nil, readError(op, err)
	}
	return out, nil
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
	p.State = keepwatch.State{EventTime: t, Kind: keepwatch.Kind(k), Percent: pct, Position: pos, Duration: dur}
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
