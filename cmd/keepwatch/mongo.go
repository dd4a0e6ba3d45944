package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/keepwatch/keepwatch/migrations"
	"github.com/keepwatch/keepwatch/storage/mongo"
)

// mongoConfig holds the MongoDB flags shared by command, flush, query, migrate
// and replay.
type mongoConfig struct {
	uri     string
	db      string
	timeout time.Duration
	migrate bool
}

// register adds --mongo-uri, --mongo-db, --mongo-timeout and --migrate.
func (c *mongoConfig) register(fs *flag.FlagSet) {
	c.registerConnection(fs)
	fs.BoolVar(&c.migrate, "migrate", false,
		"apply pending MongoDB migrations at start instead of refusing an unmigrated database")
}

// registerConnection adds only the connection flags, for subcommands that
// never migrate implicitly (migrate, replay).
func (c *mongoConfig) registerConnection(fs *flag.FlagSet) {
	fs.StringVar(&c.uri, "mongo-uri", "mongodb://localhost:27017",
		"MongoDB URI; replicaSet, w=majority, retryWrites and readPreference go here")
	fs.StringVar(&c.db, "mongo-db", "keepwatch", "MongoDB database")
	fs.DurationVar(&c.timeout, "mongo-timeout", 10*time.Second, "timeout of each MongoDB operation")
}

// open connects to MongoDB. With requireMigrated it then checks the database
// is migrated: it migrates when --migrate is set, and otherwise refuses with a
// message naming the fix.
func (c *mongoConfig) open(ctx context.Context, env *environment, appName string, requireMigrated bool) (*mongo.Store, error) {
	store, err := mongo.Open(ctx, mongo.Options{URI: c.uri, Database: c.db, Timeout: c.timeout, AppName: appName})
	if err != nil {
		return nil, fmt.Errorf("open mongodb %s: %w", redactURI(c.uri), err)
	}
	if !requireMigrated {
		return store, nil
	}
	if c.migrate {
		err = migrations.Up(ctx, store.Database(), env.logger)
	} else {
		err = migrations.Check(ctx, store.Database())
		if errors.Is(err, migrations.ErrNotMigrated) {
			err = fmt.Errorf("%w; run `keepwatch migrate up` (same --mongo-uri and --mongo-db) or start with --migrate (KEEPWATCH_MIGRATE=true)", err)
		}
	}
	if err != nil {
		_ = store.Close(context.WithoutCancel(ctx))
		return nil, err
	}
	return store, nil
}

// files estimates the connections the MongoDB driver may open: a pool of
// maxPoolSize (the URI's, else the driver's 100) and two monitoring
// connections per host of the URI.
func (c *mongoConfig) files() int {
	pool, hosts := 100, 1
	if u, err := url.Parse(c.uri); err == nil {
		if n, err := strconv.Atoi(u.Query().Get("maxPoolSize")); err == nil && n > 0 {
			pool = n
		}
		hosts = max(1, strings.Count(u.Host, ",")+1)
	}
	return hosts * (pool + 2)
}

// redactURI hides the password of a MongoDB URI for messages.
func redactURI(uri string) string {
	u, err := url.Parse(uri)
	if err != nil {
		return "(unparsable URI)"
	}
	return u.Redacted()
}
