// Package migrations prepares a keepwatch MongoDB database: versioned steps
// recorded in the schema_migrations collection, applied by `keepwatch migrate
// up` or by a service started with --migrate.
//
// Every step is idempotent (it creates what is missing and leaves what exists),
// and a step is recorded only after it succeeded, so running Up twice, or two
// Up at once from two processes, converges to the same state without a lock: a
// step both run is applied twice to the same effect, and both record it with an
// upsert on its version.
//
// MongoDB-only features (the $jsonSchema validator) are applied where the
// server supports them. FerretDB, the embedded stand-in used by `keepwatch dev`
// and the tests, has none; it is recognised by the ferretdbVersion field of
// buildInfo, and the step records and logs what it skipped.
package migrations

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	kwmongo "github.com/keepwatch/keepwatch/storage/mongo"
)

// ProgressByUserIndex is the name of the index the query side uses to list a
// user's progress newest first: {u: 1, "s.t": -1}.
const ProgressByUserIndex = "u_1_s.t_-1"

// DeadLettersByTimeIndex orders dead letters by their first failure.
const DeadLettersByTimeIndex = "first_failure_1"

// ProgressRowIndex serves the keep-watching row: a user's progress newest
// first, with the percent and completed on the key, so finished videos are
// skipped without reading their documents: {u: 1, s.k: 1, s.t: -1, s.p: 1, s.c: 1}.
const ProgressRowIndex = "u_1_s.k_1_s.t_-1_s.p_1_s.c_1"

// ProgressExpiryIndex is {exp: 1}: on MongoDB a TTL index that removes a
// document once its exp has passed, elsewhere what the retention sweep walks.
const ProgressExpiryIndex = "exp_1"

// DeadLettersByUserIndex finds a user's dead-letter entries (export, erase).
const DeadLettersByUserIndex = "entries.u_1"

// ErrNotMigrated is returned by Check when a migration is pending.
var ErrNotMigrated = errors.New("database is not migrated")

// server describes what the connected server supports.
type server struct {
	// ferretDB is FerretDB's version, empty on MongoDB.
	ferretDB string
}

// migration is one versioned, idempotent step. It returns a note recorded
// with it (what it skipped and why), or "".
type migration struct {
	version int
	name    string
	up      func(ctx context.Context, db *mongo.Database, srv server) (note string, err error)
}

// all lists the migrations in order. Versions are never reused or reordered.
func all() []migration {
	return []migration{
		{1, "create progress collection", createProgress},
		{2, "index progress by user, newest first", indexProgressByUser},
		{3, "create dead-letter collection", createDeadLetters},
		{4, "index progress for the keep-watching row", indexProgressRow},
		{5, "expire progress past its retention", indexProgressExpiry},
		{6, "index dead letters by user", indexDeadLettersByUser},
		{7, "validate series fields, expiry and erase tombstones", validateSeriesAndErase},
	}
}

// Step is one migration and its state in a database, as Status reports it.
type Step struct {
	Version   int
	Name      string
	Applied   bool
	AppliedAt time.Time // zero when not applied
	// Note says what the step skipped on this server, e.g. the validator on
	// FerretDB.
	Note string
}

// record is a schema_migrations document.
type record struct {
	Version   int       `bson:"_id"`
	Name      string    `bson:"name"`
	AppliedAt time.Time `bson:"applied_at"`
	Note      string    `bson:"note,omitempty"`
}

// Up applies every pending migration in order. It is safe to run twice and
// from two processes at once.
func Up(ctx context.Context, db *mongo.Database, log *slog.Logger) error {
	srv, err := probe(ctx, db)
	if err != nil {
		return err
	}
	done, err := applied(ctx, db)
	if err != nil {
		return err
	}
	if srv.ferretDB != "" {
		log.Info("migrate: server is FerretDB, MongoDB-only features are skipped", "ferretdb_version", srv.ferretDB)
	}
	for _, m := range all() {
		if _, ok := done[m.version]; ok {
			continue
		}
		note, err := m.up(ctx, db, srv)
		if err != nil {
			return fmt.Errorf("migration %d (%s): %w", m.version, m.name, err)
		}
		rec := record{Version: m.version, Name: m.name, AppliedAt: time.Now().UTC().Truncate(time.Millisecond), Note: note}
		// $setOnInsert: when two processes apply the same step, the first
		// record stays.
		_, err = db.Collection(kwmongo.MigrationCollection).UpdateOne(ctx,
			bson.D{{Key: "_id", Value: m.version}},
			bson.D{{Key: "$setOnInsert", Value: bson.D{
				{Key: "name", Value: rec.Name}, {Key: "applied_at", Value: rec.AppliedAt}, {Key: "note", Value: rec.Note},
			}}},
			options.UpdateOne().SetUpsert(true))
		if err != nil && !mongo.IsDuplicateKeyError(err) {
			return fmt.Errorf("record migration %d: %w", m.version, err)
		}
		attrs := []any{"version", m.version, "name", m.name}
		if note != "" {
			attrs = append(attrs, "note", note)
		}
		log.Info("migration applied", attrs...)
	}
	return nil
}

// Status lists every migration this binary knows with whether it is applied.
func Status(ctx context.Context, db *mongo.Database) ([]Step, error) {
	done, err := applied(ctx, db)
	if err != nil {
		return nil, err
	}
	var out []Step
	for _, m := range all() {
		st := Step{Version: m.version, Name: m.name}
		if r, ok := done[m.version]; ok {
			st.Applied, st.AppliedAt, st.Note = true, r.AppliedAt, r.Note
		}
		out = append(out, st)
	}
	return out, nil
}

// Check returns an error wrapping ErrNotMigrated, naming the pending
// migrations, when the database lacks one this binary needs. A database
// migrated further by a newer binary passes.
func Check(ctx context.Context, db *mongo.Database) error {
	sts, err := Status(ctx, db)
	if err != nil {
		return err
	}
	var pending []string
	for _, s := range sts {
		if !s.Applied {
			pending = append(pending, fmt.Sprintf("%d (%s)", s.Version, s.Name))
		}
	}
	if len(pending) > 0 {
		return fmt.Errorf("%w: database %q lacks migration %s", ErrNotMigrated, db.Name(), strings.Join(pending, ", "))
	}
	return nil
}

func applied(ctx context.Context, db *mongo.Database) (map[int]record, error) {
	cur, err := db.Collection(kwmongo.MigrationCollection).Find(ctx, bson.D{})
	if err != nil {
		return nil, fmt.Errorf("read applied migrations: %w", err)
	}
	var recs []record
	if err := cur.All(ctx, &recs); err != nil {
		return nil, fmt.Errorf("read applied migrations: %w", err)
	}
	out := make(map[int]record, len(recs))
	for _, r := range recs {
		out[r.Version] = r
	}
	return out, nil
}

func probe(ctx context.Context, db *mongo.Database) (server, error) {
	var info bson.M
	if err := db.RunCommand(ctx, bson.D{{Key: "buildInfo", Value: 1}}).Decode(&info); err != nil {
		return server{}, fmt.Errorf("migrate: buildInfo: %w", err)
	}
	var srv server
	if v, ok := info["ferretdbVersion"]; ok {
		srv.ferretDB = fmt.Sprint(v)
	}
	return srv, nil
}

// Server error codes the steps tolerate.
const (
	codeNamespaceExists = 48
	codeNotImplemented  = 238
)

func hasCode(err error, code int) bool {
	var se mongo.ServerError
	return errors.As(err, &se) && se.HasErrorCode(code)
}

// progressValidator mirrors the progress document of storage/mongo. It makes
// MongoDB refuse a malformed write (a bug) instead of storing it; such a write
// fails for good and is dead-lettered by the flusher.
func progressValidator() bson.D {
	num := bson.D{{Key: "bsonType", Value: "double"}}
	return bson.D{{Key: "$jsonSchema", Value: bson.D{
		{Key: "bsonType", Value: "object"},
		{Key: "required", Value: bson.A{"_id", "u", "v", "s"}},
		{Key: "properties", Value: bson.D{
			{Key: "_id", Value: bson.D{{Key: "bsonType", Value: "string"}}},
			{Key: "u", Value: bson.D{{Key: "bsonType", Value: "string"}, {Key: "minLength", Value: 1}}},
			{Key: "v", Value: bson.D{{Key: "bsonType", Value: "string"}, {Key: "minLength", Value: 1}, {Key: "maxLength", Value: 128}}},
			{Key: "s", Value: bson.D{
				{Key: "bsonType", Value: "object"},
				{Key: "required", Value: bson.A{"t", "k", "p", "pos", "dur"}},
				{Key: "properties", Value: bson.D{
					{Key: "t", Value: bson.D{{Key: "bsonType", Value: "long"}, {Key: "minimum", Value: 0}}},
					{Key: "k", Value: bson.D{{Key: "bsonType", Value: "int"}, {Key: "enum", Value: bson.A{0, 1}}}},
					{Key: "p", Value: bson.D{{Key: "bsonType", Value: "double"}, {Key: "minimum", Value: 0}, {Key: "maximum", Value: 100}}},
					{Key: "pos", Value: num},
					{Key: "dur", Value: num},
				}},
			}},
		}},
	}}}
}

func createProgress(ctx context.Context, db *mongo.Database, srv server) (string, error) {
	if srv.ferretDB != "" {
		if err := createCollection(ctx, db, kwmongo.ProgressCollection); err != nil {
			return "", err
		}
		return "schema validator not applied: the server is FerretDB (ferretdbVersion " + srv.ferretDB + "), which has no $jsonSchema", nil
	}
	opts := options.CreateCollection().SetValidator(progressValidator()).
		SetValidationLevel("strict").SetValidationAction("error")
	err := db.CreateCollection(ctx, kwmongo.ProgressCollection, opts)
	switch {
	case err == nil:
		return "", nil
	case hasCode(err, codeNamespaceExists):
		// Created earlier (by a concurrent run, or implicitly by a write):
		// set the validator on it.
		err = db.RunCommand(ctx, bson.D{
			{Key: "collMod", Value: kwmongo.ProgressCollection},
			{Key: "validator", Value: progressValidator()},
			{Key: "validationLevel", Value: "strict"},
			{Key: "validationAction", Value: "error"},
		}).Err()
		if err != nil {
			return "", fmt.Errorf("set validator on %s: %w", kwmongo.ProgressCollection, err)
		}
		return "", nil
	case hasCode(err, codeNotImplemented):
		// A MongoDB-compatible server without validators that does not say
		// it is FerretDB.
		if err := createCollection(ctx, db, kwmongo.ProgressCollection); err != nil {
			return "", err
		}
		return "schema validator not applied: the server does not implement validators", nil
	default:
		return "", fmt.Errorf("create %s: %w", kwmongo.ProgressCollection, err)
	}
}

func indexProgressByUser(ctx context.Context, db *mongo.Database, _ server) (string, error) {
	// Building it on a populated collection can outlast the client's
	// per-operation timeout (--mongo-timeout); a deadline on the context
	// takes precedence over that timeout.
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Hour)
		defer cancel()
	}
	_, err := db.Collection(kwmongo.ProgressCollection).Indexes().CreateOne(ctx, mongo.IndexModel{
		Keys:    bson.D{{Key: "u", Value: 1}, {Key: "s.t", Value: -1}},
		Options: options.Index().SetName(ProgressByUserIndex),
	})
	if err != nil {
		return "", fmt.Errorf("create index %s: %w", ProgressByUserIndex, err)
	}
	return "", nil
}

func createDeadLetters(ctx context.Context, db *mongo.Database, _ server) (string, error) {
	if err := createCollection(ctx, db, kwmongo.DeadLetterCollection); err != nil {
		return "", err
	}
	_, err := db.Collection(kwmongo.DeadLetterCollection).Indexes().CreateOne(ctx, mongo.IndexModel{
		Keys:    bson.D{{Key: "first_failure", Value: 1}},
		Options: options.Index().SetName(DeadLettersByTimeIndex),
	})
	if err != nil {
		return "", fmt.Errorf("create index %s: %w", DeadLettersByTimeIndex, err)
	}
	return "", nil
}

// longBuild gives an index build on a populated collection an hour: it can
// outlast the client's per-operation timeout (--mongo-timeout), and a
// deadline on the context takes precedence over that timeout.
func longBuild(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, time.Hour)
}

func createIndex(ctx context.Context, coll *mongo.Collection, m mongo.IndexModel, name string) error {
	ctx, cancel := longBuild(ctx)
	defer cancel()
	m.Options = m.Options.SetName(name)
	if _, err := coll.Indexes().CreateOne(ctx, m); err != nil {
		return fmt.Errorf("create index %s: %w", name, err)
	}
	return nil
}

func indexProgressRow(ctx context.Context, db *mongo.Database, _ server) (string, error) {
	return "", createIndex(ctx, db.Collection(kwmongo.ProgressCollection), mongo.IndexModel{
		Keys:    bson.D{{Key: "u", Value: 1}, {Key: "s.k", Value: 1}, {Key: "s.t", Value: -1}, {Key: "s.p", Value: 1}, {Key: "s.c", Value: 1}},
		Options: options.Index(),
	}, ProgressRowIndex)
}

// indexProgressExpiry makes {exp: 1} a TTL index where the server has them:
// exp is the date a document may go (event time + --retention, set by the
// writer), so the index expires at that date (expireAfterSeconds 0) and
// --retention changes need no new index.
func indexProgressExpiry(ctx context.Context, db *mongo.Database, srv server) (string, error) {
	coll := db.Collection(kwmongo.ProgressCollection)
	keys := bson.D{{Key: "exp", Value: 1}}
	if srv.ferretDB == "" {
		err := createIndex(ctx, coll, mongo.IndexModel{Keys: keys, Options: options.Index().SetExpireAfterSeconds(0)}, ProgressExpiryIndex)
		if err == nil || !hasCode(err, codeNotImplemented) {
			return "", err
		}
	}
	if err := createIndex(ctx, coll, mongo.IndexModel{Keys: keys, Options: options.Index()}, ProgressExpiryIndex); err != nil {
		return "", err
	}
	return "TTL not applied: the server has no TTL indexes; the flusher's retention sweep removes expired documents", nil
}

func indexDeadLettersByUser(ctx context.Context, db *mongo.Database, _ server) (string, error) {
	return "", createIndex(ctx, db.Collection(kwmongo.DeadLetterCollection), mongo.IndexModel{
		Keys: bson.D{{Key: "entries.u", Value: 1}}, Options: options.Index(),
	}, DeadLettersByUserIndex)
}

// progressValidatorV7 is progressValidator with what migration 7 added: the
// state's completed, episode and series, the expiry date, and the erase
// tombstone ({_id: "<user>/", v: "", s.k: 2}).
func progressValidatorV7() bson.D {
	num := bson.D{{Key: "bsonType", Value: "double"}}
	return bson.D{{Key: "$jsonSchema", Value: bson.D{
		{Key: "bsonType", Value: "object"},
		{Key: "required", Value: bson.A{"_id", "u", "v", "s"}},
		{Key: "properties", Value: bson.D{
			{Key: "_id", Value: bson.D{{Key: "bsonType", Value: "string"}}},
			{Key: "u", Value: bson.D{{Key: "bsonType", Value: "string"}, {Key: "minLength", Value: 1}}},
			{Key: "v", Value: bson.D{{Key: "bsonType", Value: "string"}, {Key: "maxLength", Value: 128}}},
			{Key: "exp", Value: bson.D{{Key: "bsonType", Value: "date"}}},
			{Key: "s", Value: bson.D{
				{Key: "bsonType", Value: "object"},
				{Key: "required", Value: bson.A{"t", "k", "p", "pos", "dur"}},
				{Key: "properties", Value: bson.D{
					{Key: "t", Value: bson.D{{Key: "bsonType", Value: "long"}, {Key: "minimum", Value: 0}}},
					{Key: "k", Value: bson.D{{Key: "bsonType", Value: "int"}, {Key: "enum", Value: bson.A{0, 1, 2}}}},
					{Key: "p", Value: bson.D{{Key: "bsonType", Value: "double"}, {Key: "minimum", Value: 0}, {Key: "maximum", Value: 100}}},
					{Key: "pos", Value: num},
					{Key: "dur", Value: num},
					{Key: "c", Value: bson.D{{Key: "bsonType", Value: "bool"}}},
					{Key: "e", Value: num},
					{Key: "sr", Value: bson.D{{Key: "bsonType", Value: "string"}, {Key: "maxLength", Value: 128}}},
				}},
			}},
		}},
	}}}
}

func validateSeriesAndErase(ctx context.Context, db *mongo.Database, srv server) (string, error) {
	if srv.ferretDB != "" {
		return "schema validator not changed: the server is FerretDB (ferretdbVersion " + srv.ferretDB + "), which has no $jsonSchema", nil
	}
	err := db.RunCommand(ctx, bson.D{
		{Key: "collMod", Value: kwmongo.ProgressCollection},
		{Key: "validator", Value: progressValidatorV7()},
		{Key: "validationLevel", Value: "strict"},
		{Key: "validationAction", Value: "error"},
	}).Err()
	switch {
	case err == nil:
		return "", nil
	case hasCode(err, codeNotImplemented):
		return "schema validator not changed: the server does not implement validators", nil
	default:
		return "", fmt.Errorf("set validator on %s: %w", kwmongo.ProgressCollection, err)
	}
}

// createCollection creates a collection, accepting that it exists.
func createCollection(ctx context.Context, db *mongo.Database, name string) error {
	if err := db.CreateCollection(ctx, name); err != nil && !hasCode(err, codeNamespaceExists) {
		return fmt.Errorf("create %s: %w", name, err)
	}
	return nil
}
