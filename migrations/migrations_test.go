package migrations_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sort"
	"sync"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/keepwatch/keepwatch/internal/testenv"
	"github.com/keepwatch/keepwatch/migrations"
)

func TestUpTwiceAndConcurrentlyGiveTheSameState(t *testing.T) {
	ctx := context.Background()
	m := testenv.StartMongo(t)
	client := m.Client()
	log := slog.New(slog.DiscardHandler)

	// Reference: one Up on a fresh database.
	ref := client.Database(m.Database + "_ref")
	t.Cleanup(func() { _ = ref.Drop(context.Background()) })
	if err := migrations.Check(ctx, ref); !errors.Is(err, migrations.ErrNotMigrated) {
		t.Fatalf("Check on an empty database = %v, want ErrNotMigrated", err)
	}
	if err := migrations.Up(ctx, ref, log); err != nil {
		t.Fatal(err)
	}
	if err := migrations.Check(ctx, ref); err != nil {
		t.Fatalf("Check after Up: %v", err)
	}
	want := snapshot(t, ref)

	t.Run("twice", func(t *testing.T) {
		db := client.Database(m.Database + "_twice")
		t.Cleanup(func() { _ = db.Drop(context.Background()) })
		for i := 0; i < 2; i++ {
			if err := migrations.Up(ctx, db, log); err != nil {
				t.Fatalf("Up #%d: %v", i+1, err)
			}
		}
		if got := snapshot(t, db); !reflect.DeepEqual(got, want) {
			t.Fatalf("state after two Up:\n%v\nwant\n%v", got, want)
		}
	})
	t.Run("concurrently", func(t *testing.T) {
		db := client.Database(m.Database + "_conc")
		t.Cleanup(func() { _ = db.Drop(context.Background()) })
		// Two clients, as two processes would have.
		dbs := []*mongo.Database{db, m.Client().Database(db.Name())}
		var wg sync.WaitGroup
		errs := make([]error, len(dbs))
		for i, d := range dbs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = migrations.Up(ctx, d, log)
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		if got := snapshot(t, db); !reflect.DeepEqual(got, want) {
			t.Fatalf("state after two concurrent Up:\n%v\nwant\n%v", got, want)
		}
	})
}

func TestStatusReportsEveryStep(t *testing.T) {
	ctx := context.Background()
	m := testenv.StartMongo(t)
	db := m.DB()
	before, err := migrations.Status(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if len(before) == 0 {
		t.Fatal("no migrations known")
	}
	for _, s := range before {
		if s.Applied {
			t.Fatalf("step %d applied on an empty database", s.Version)
		}
	}
	if err := migrations.Up(ctx, db, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	after, err := migrations.Status(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range after {
		if !s.Applied || s.AppliedAt.IsZero() {
			t.Fatalf("step %d not recorded: %+v", s.Version, s)
		}
	}
	if m.Embedded && after[0].Note == "" {
		t.Fatalf("on FerretDB the progress step should say the validator was skipped: %+v", after[0])
	}
}

// snapshot describes a database's collections, their indexes and the
// recorded migrations, without times.
func snapshot(t *testing.T, db *mongo.Database) []string {
	t.Helper()
	ctx := context.Background()
	names, err := db.ListCollectionNames(ctx, bson.D{})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(names)
	var out []string
	for _, n := range names {
		cur, err := db.Collection(n).Indexes().List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var idx []struct {
			Name   string `bson:"name"`
			Key    bson.D `bson:"key"`
			Unique bool   `bson:"unique"`
		}
		if err := cur.All(ctx, &idx); err != nil {
			t.Fatal(err)
		}
		sort.Slice(idx, func(i, j int) bool { return idx[i].Name < idx[j].Name })
		for _, ix := range idx {
			out = append(out, fmt.Sprintf("%s index %s %v unique=%v", n, ix.Name, ix.Key, ix.Unique))
		}
	}
	sts, err := migrations.Status(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sts {
		out = append(out, fmt.Sprintf("migration %d %q applied=%v note=%q", s.Version, s.Name, s.Applied, s.Note))
	}
	return out
}
