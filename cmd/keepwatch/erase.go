package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/keepwatch/keepwatch"
	"github.com/keepwatch/keepwatch/query"
	"github.com/keepwatch/keepwatch/storage/mongo"
)

// userFlag reads --user for erase and export, which act on one user's data:
// it must be given on the command line, since a KEEPWATCH_USER left in an
// operator's environment must never pick the user whose data is erased.
func userFlag(fs *flag.FlagSet, verb string) *string {
	return fs.String("user", "", "the user (a token's sub) whose data to "+verb+"; required, on the command line only")
}

func checkUser(fs *flag.FlagSet, user string) error {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == "user" })
	switch {
	case !given:
		return usageError{"--user is required on the command line (it is never read from KEEPWATCH_USER)"}
	case !keepwatch.ValidUserID(user):
		return usageError{fmt.Sprintf("--user %q is not a user id: 1-128 bytes of UTF-8 without control characters", user)}
	}
	return nil
}

// runErase is `keepwatch erase --user U`: the operator's DELETE /v1/progress,
// applied at once. The erase is recorded in Redis first (the user's pending
// entries go, and new ones from before it are refused), then applied to
// MongoDB (tombstone, then progress and dead-letter entries), then removed
// from Redis. A flusher writing the user's older entries meanwhile cannot
// make them stay (see mongo.Store.WriteProgress); if MongoDB fails half-way,
// the erase stays in Redis and the flusher finishes it.
func runErase(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet(env, "erase", "Erase everything keepwatch holds of a user up to now: their MongoDB documents, their pending Redis entries and their dead-letter entries. "+
		"Progress made after it is kept, and nothing older can come back; the user's tombstone stays until --retention.")
	user := userFlag(fs, "erase")
	var (
		rc redisConfig
		mc mongoConfig
	)
	rc.register(fs)
	mc.registerConnection(fs)
	if err := parseFlags(env, fs, args); err != nil {
		return err
	}
	if err := checkUser(fs, *user); err != nil {
		return err
	}
	client, buf, err := rc.open(ctx, env.logger)
	if err != nil {
		return err
	}
	defer func() { _ = client.Close() }()
	store, err := mc.open(ctx, env, "keepwatch-erase", true)
	if err != nil {
		return err
	}
	defer func() { _ = store.Close(context.WithoutCancel(ctx)) }()

	at := time.Now().UnixMilli()
	dropped, err := buf.Erase(ctx, *user, at)
	if err != nil {
		return fmt.Errorf("erase %q: nothing erased: %w", *user, err)
	}
	res, err := store.EraseUser(ctx, *user, at)
	if err != nil {
		return fmt.Errorf("erase %q: %d pending entries dropped from Redis and the erase recorded there, which the flusher applies to MongoDB at its next drain; "+
			"MongoDB failed: %w", *user, dropped, err)
	}
	if err := buf.EraseDone(ctx, *user, at); err != nil {
		return fmt.Errorf("erase %q: applied, but its record stays in Redis until the flusher's next drain: %w", *user, err)
	}
	fmt.Fprintf(env.stdout, "erased user %q up to %s:\n  redis:        %d pending entries\n  mongodb:      %d progress documents\n  dead letters: %d entries (%d dead letters left empty and deleted)\n"+
		"the user's erase tombstone stays in MongoDB until --retention, so nothing older comes back\n",
		*user, time.UnixMilli(at).UTC().Format(time.RFC3339Nano), dropped, res.Documents, res.DeadLetterEntries, res.DeadLetters)
	return nil
}

// runExport is `keepwatch export --user U`: what GET /v1/export streams to
// the user, written to stdout.
func runExport(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet(env, "export", "Write everything keepwatch holds of a user to stdout as NDJSON, as GET /v1/export does (docs/api.md has the line schema).")
	user := userFlag(fs, "export")
	var (
		rc    redisConfig
		mc    mongoConfig
		rules rulesConfig
	)
	rc.register(fs)
	mc.registerConnection(fs)
	rules.registerRules(fs)
	if err := parseFlags(env, fs, args); err != nil {
		return err
	}
	if err := checkUser(fs, *user); err != nil {
		return err
	}
	r, err := rules.get(env.logger)
	if err != nil {
		return err
	}
	client, buf, err := rc.dial()
	if err != nil {
		return err
	}
	defer func() { _ = client.Close() }()
	// Under another shard count the user's pending entries would be looked
	// for in the wrong shard, and the export would miss them.
	if err := buf.MatchesShards(ctx); err != nil {
		return err
	}
	store, err := mc.open(ctx, env, "keepwatch-export", true)
	if err != nil {
		return err
	}
	defer func() { _ = store.Close(context.WithoutCancel(ctx)) }()
	// The primary: an export right after an erase must not read a lagging secondary.
	reader, err := store.Reader(mongo.ReadOptions{})
	if err != nil {
		return err
	}
	x, err := query.PrepareExport(ctx, query.ExportSources{Store: reader, Export: reader, Pending: buf}, r, *user, time.Now())
	if err != nil {
		return err
	}
	_, err = x.WriteTo(ctx, env.stdout)
	return err
}
