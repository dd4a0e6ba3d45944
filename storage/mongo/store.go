// Package mongo stores progress and dead letters in MongoDB (or a
// MongoDB-protocol server such as FerretDB) with the v2 Go driver.
//
// A progress document is
//
//	{_id: "<user>/<video>", u: <user>, v: <video>,
//	 s: {t: <event time ms, int64>, k: <kind, int32>, p: <percent>, pos: <position>, dur: <duration>,
//	     c: <completed, bool>, e: <episode>, sr: <series id, string>},
//	 exp: <date: event time + retention>}
//
// The embedded document s keeps the fields of keepwatch.State in its order, so
// "$max": {s: …} compares event time first and then the tie-break fields,
// exactly like State.Compare: a write can never replace a newer state, and needs
// neither a pipeline update nor a transaction. Every write sets every field of
// s; documents written before c, e and sr existed lack them, compare below a
// document with the same first fields (BSON compares a shorter document with
// an equal prefix as smaller) and decode with their lowest values, as
// State.Compare has them.
//
// A user's erase is the document {_id: "<user>/", u: <user>, v: "", s: {… k: 2}}
// (video ids are never empty): its event time hides every state of the user
// at or before it, and the writer never leaves such a state behind (see
// WriteProgress).
//
// exp is when the document may be removed (Options.Retention): a TTL index
// removes it on MongoDB, SweepExpired where the server has no TTL indexes.
package mongo

import (
	"context"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/keepwatch/keepwatch"
)

// Collection names.
const (
	ProgressCollection   = "progress"
	DeadLetterCollection = "dead_letters"
	MigrationCollection  = "schema_migrations"
)

// Options configure a Store. The URI carries everything MongoDB-specific
// (replicaSet, w=majority, retryWrites, readPreference, maxStalenessSeconds),
// so the code is the same against FerretDB and a MongoDB replica set.
type Options struct {
	URI      string
	Database string
	// Timeout bounds each operation that has no deadline of its own.
	Timeout time.Duration
	// AppName shows in MongoDB's logs and currentOp.
	AppName string
	// WriteChunk is the most statements WriteProgress sends in one bulk
	// write; 0 means DefaultWriteChunk.
	WriteChunk int
	// Retention is how long after its event time a document may be removed
	// (its exp); 0 writes no exp, and nothing expires.
	Retention time.Duration
}

// Store is a connection to one keepwatch database.
type Store struct {
	client    *mongo.Client
	db        *mongo.Database
	timeout   time.Duration
	chunk     int
	retention time.Duration
	// afterCheck, when set by a test, runs between the writer's first look
	// at the tombstones and its writes: where a concurrent erase can slip in.
	afterCheck func()
}

// Open connects and pings the server.
func Open(ctx context.Context, o Options) (*Store, error) {
	if o.Database == "" {
		o.Database = "keepwatch"
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.WriteChunk <= 0 {
		o.WriteChunk = DefaultWriteChunk
	}
	co := options.Client().ApplyURI(o.URI).SetTimeout(o.Timeout)
	if o.AppName != "" {
		co.SetAppName(o.AppName)
	}
	client, err := mongo.Connect(co)
	if err != nil {
		return nil, fmt.Errorf("connect to mongodb: %w", err)
	}
	if o.Retention < 0 {
		_ = client.Disconnect(context.Background())
		return nil, fmt.Errorf("open mongodb: retention %s is negative", o.Retention)
	}
	s := &Store{client: client, db: client.Database(o.Database), timeout: o.Timeout, chunk: o.WriteChunk, retention: o.Retention}
	if err := s.Ping(ctx); err != nil {
		_ = client.Disconnect(context.Background())
		return nil, err
	}
	return s, nil
}

// Close disconnects.
func (s *Store) Close(ctx context.Context) error {
	if err := s.client.Disconnect(ctx); err != nil {
		return fmt.Errorf("disconnect from mongodb: %w", err)
	}
	return nil
}

// Ping checks that the server answers; it wraps keepwatch.ErrUnavailable.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.client.Ping(ctx, nil); err != nil {
		return fmt.Errorf("ping mongodb: %w: %w", keepwatch.ErrUnavailable, err)
	}
	return nil
}

// Database is the keepwatch database, for migrations and tests.
func (s *Store) Database() *mongo.Database { return s.db }

// stateDoc is the embedded, ordered state of a progress document, as dead
// letters hold it and as the reflective decode reads one. E is a pointer
// because a state stored before episodes existed has none, which is Unknown,
// not 0.
type stateDoc struct {
	T   int64    `bson:"t"`
	K   int32    `bson:"k"`
	P   float64  `bson:"p"`
	Pos float64  `bson:"pos"`
	Dur float64  `bson:"dur"`
	C   bool     `bson:"c"`
	E   *float64 `bson:"e"`
	Sr  string   `bson:"sr"`
}

// progressDoc is a progress document as stored.
type progressDoc struct {
	ID string   `bson:"_id"`
	U  string   `bson:"u"`
	V  string   `bson:"v"`
	S  stateDoc `bson:"s"`
}

func toStateDoc(st keepwatch.State) bson.D {
	// bson.D, not the struct, so the field order is explicit: $max compares
	// embedded documents field by field in this order.
	// Every field, always: a missing one would compare lower than its
	// lowest value.
	return bson.D{
		{Key: "t", Value: st.EventTime},
		{Key: "k", Value: int32(st.Kind)},
		{Key: "p", Value: st.Percent},
		{Key: "pos", Value: st.Position},
		{Key: "dur", Value: st.Duration},
		{Key: "c", Value: st.Completed},
		{Key: "e", Value: st.Episode},
		{Key: "sr", Value: st.SeriesID},
	}
}

func (d stateDoc) state() keepwatch.State {
	st := keepwatch.State{EventTime: d.T, Kind: keepwatch.Kind(d.K), Percent: d.P, Position: d.Pos, Duration: d.Dur,
		Completed: d.C, Episode: keepwatch.Unknown, SeriesID: d.Sr}
	if d.E != nil {
		st.Episode = *d.E
	}
	return st
}

func fromState(st keepwatch.State) stateDoc {
	e := st.Episode
	return stateDoc{T: st.EventTime, K: int32(st.Kind), P: st.Percent, Pos: st.Position, Dur: st.Duration, C: st.Completed, E: &e, Sr: st.SeriesID}
}

// expiry is the exp of a document whose newest state is at event time t;
// zero when nothing expires.
func (s *Store) expiry(t int64) time.Time {
	if s.retention <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(t).Add(s.retention).UTC()
}

func (d progressDoc) progress() keepwatch.Progress {
	return keepwatch.Progress{UserID: d.U, VideoID: d.V, State: d.S.state()}
}

// WithRetention returns a store sharing s's connection whose writes give
// documents the expiry event time + d (d 0: none). Closing either closes
// the connection of both.
func (s *Store) WithRetention(d time.Duration) *Store {
	c := *s
	c.retention = max(0, d)
	return &c
}

// WithWriteChunk returns a store sharing s's connection whose WriteProgress
// sends at most n statements per bulk write (n < 1: DefaultWriteChunk).
// Closing either closes the connection of both.
func (s *Store) WithWriteChunk(n int) *Store {
	if n < 1 {
		n = DefaultWriteChunk
	}
	c := *s
	c.chunk = n
	return &c
}
