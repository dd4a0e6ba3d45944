package ferret_test

import (
	"context"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/keepwatch/keepwatch/internal/ferret"
)

// TestRestartKeepsData guards what the "MongoDB stopped" tests and `keepwatch
// dev` rely on: a server stopped and started again on the same port and
// directory serves the data written before.
func TestRestartKeepsData(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	srv, err := ferret.Start(ctx, ferret.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	addr := srv.Addr()
	c, err := mongo.Connect(options.Client().ApplyURI(srv.URI()).SetTimeout(10 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Disconnect(ctx) }()
	coll := c.Database("kw").Collection("things")
	if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "a"}, {Key: "n", Value: 1}}); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	srv.Stop() // idempotent

	srv, err = ferret.Start(ctx, ferret.Config{Dir: dir, ListenAddr: addr})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	if srv.Addr() != addr {
		t.Fatalf("restarted on %s, want %s", srv.Addr(), addr)
	}
	var got struct{ N int }
	if err := coll.FindOne(ctx, bson.D{{Key: "_id", Value: "a"}}).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if got.N != 1 {
		t.Fatalf("n = %d, want 1", got.N)
	}
}

func TestStartRefusesBusyPort(t *testing.T) {
	ctx := context.Background()
	srv, err := ferret.Start(ctx, ferret.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	if s2, err := ferret.Start(ctx, ferret.Config{Dir: t.TempDir(), ListenAddr: srv.Addr()}); err == nil {
		s2.Stop()
		t.Fatal("second server on the same port started")
	}
}
