package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/keepwatch/keepwatch/internal/ferret"
)

// MongoURIEnv names the variable that points the tests at a real MongoDB
// (e.g. a replica set: "mongodb://h1,h2,h3/?replicaSet=rs0&w=majority").
const MongoURIEnv = "KEEPWATCH_TEST_MONGO_URI"

// Mongo is a MongoDB-protocol server for one test and a database name no other
// test uses.
type Mongo struct {
	t testing.TB
	// URI is the server's mongodb:// URI.
	URI string
	// Database is a fresh database name for this test.
	Database string
	// Embedded tells whether the server is an embedded FerretDB (true) or the
	// external server named by KEEPWATCH_TEST_MONGO_URI.
	Embedded bool

	dir  string
	addr string
	srv  *ferret.Server
}

// StartMongo returns the server named by KEEPWATCH_TEST_MONGO_URI when set,
// else a fresh embedded FerretDB (SQLite in a temp dir) on a free port, and a
// database name unique to the test. The embedded server is stopped and the
// database dropped when the test ends.
//
// One server per test keeps tests isolated, including from a test that stops
// its server; starting one takes milliseconds.
func StartMongo(t testing.TB) *Mongo {
	t.Helper()
	m := &Mongo{t: t, Database: dbName(t)}
	if uri := os.Getenv(MongoURIEnv); uri != "" {
		m.URI = uri
		t.Cleanup(m.dropDatabase)
		return m
	}
	return startEmbedded(t, m)
}

// StartEmbeddedMongo always starts an embedded FerretDB, even when
// KEEPWATCH_TEST_MONGO_URI is set: for tests that must stop and restart the
// server (Stop, Start).
func StartEmbeddedMongo(t testing.TB) *Mongo {
	t.Helper()
	return startEmbedded(t, &Mongo{t: t, Database: dbName(t)})
}

func startEmbedded(t testing.TB, m *Mongo) *Mongo {
	t.Helper()
	m.Embedded = true
	m.dir = t.TempDir()
	m.Start()
	m.URI = m.srv.URI()
	m.addr = m.srv.Addr()
	t.Cleanup(m.Stop)
	return m
}

// Start (re)starts the embedded server on its port with its data. It is a
// no-op while the server runs, and fails the test for an external server.
func (m *Mongo) Start() {
	m.t.Helper()
	if !m.Embedded {
		m.t.Fatalf("testenv: cannot start the external MongoDB at %s", m.URI)
	}
	if m.srv != nil {
		return
	}
	logf, err := os.OpenFile(filepath.Join(m.dir, "ferretdb.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		m.t.Fatalf("testenv: ferretdb log: %v", err)
	}
	m.t.Cleanup(func() { _ = logf.Close() })
	logger := slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Retry the bind for a while: right after Stop the old listener's port can
	// still be held briefly.
	for {
		srv, err := ferret.Start(ctx, ferret.Config{Dir: filepath.Join(m.dir, "data"), ListenAddr: m.addr, Logger: logger})
		if err == nil {
			m.srv = srv
			return
		}
		if m.addr == "" || ctx.Err() != nil {
			m.t.Fatalf("testenv: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop stops the embedded server; clients then see network errors. It is a
// no-op for an external server.
func (m *Mongo) Stop() {
	if m.srv == nil {
		return
	}
	m.srv.Stop()
	m.srv = nil
}

// Client returns a client for the server, disconnected when the test ends.
func (m *Mongo) Client() *mongo.Client {
	m.t.Helper()
	c, err := mongo.Connect(options.Client().ApplyURI(m.URI).SetTimeout(30 * time.Second))
	if err != nil {
		m.t.Fatalf("testenv: connect to %s: %v", m.URI, err)
	}
	m.t.Cleanup(func() { _ = c.Disconnect(context.Background()) })
	return c
}

// DB returns the test's database on a new client.
func (m *Mongo) DB() *mongo.Database { return m.Client().Database(m.Database) }

func (m *Mongo) dropDatabase() {
	c, err := mongo.Connect(options.Client().ApplyURI(m.URI).SetTimeout(10 * time.Second))
	if err != nil {
		return
	}
	defer func() { _ = c.Disconnect(context.Background()) }()
	_ = c.Database(m.Database).Drop(context.Background())
}

// dbName is "kwt_<test name>_<random>", limited to characters and a length
// both MongoDB and FerretDB accept.
func dbName(t testing.TB) string {
	var b strings.Builder
	for _, r := range strings.ToLower(t.Name()) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	name := b.String()
	if len(name) > 40 {
		name = name[len(name)-40:]
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	return "kwt_" + name + "_" + hex.EncodeToString(rnd[:])
}
