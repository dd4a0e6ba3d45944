package testenv

import (
	"context"
	"strings"
	"sync"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"
	mgo "go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/keepwatch/keepwatch"
	"github.com/keepwatch/keepwatch/storage/mongo"
)

// ProgressStates reads every progress document straight from the collection,
// not through keepwatch's reader, as a map _id → state; a user's erase
// tombstone is "<user>/". It fails the test if a document's _id is not
// keepwatch.ID(u, v).
func ProgressStates(t testing.TB, db *mgo.Database) map[string]keepwatch.State {
	t.Helper()
	cur, err := db.Collection(mongo.ProgressCollection).Find(context.Background(), bson.D{})
	if err != nil {
		t.Fatal(err)
	}
	var docs []struct {
		ID string `bson:"_id"`
		U  string `bson:"u"`
		V  string `bson:"v"`
		S  struct {
			T   int64    `bson:"t"`
			K   int32    `bson:"k"`
			P   float64  `bson:"p"`
			Pos float64  `bson:"pos"`
			Dur float64  `bson:"dur"`
			C   bool     `bson:"c"`
			E   *float64 `bson:"e"`
			Sr  string   `bson:"sr"`
		} `bson:"s"`
	}
	if err := cur.All(context.Background(), &docs); err != nil {
		t.Fatal(err)
	}
	out := make(map[string]keepwatch.State, len(docs))
	for _, d := range docs {
		if d.ID != keepwatch.ID(d.U, d.V) {
			t.Fatalf("document %q has u=%q v=%q", d.ID, d.U, d.V)
		}
		st := keepwatch.State{EventTime: d.S.T, Kind: keepwatch.Kind(d.S.K), Percent: d.S.P, Position: d.S.Pos, Duration: d.S.Dur,
			Completed: d.S.C, Episode: keepwatch.Unknown, SeriesID: d.S.Sr}
		if d.S.E != nil {
			st.Episode = *d.S.E
		}
		out[d.ID] = st
	}
	return out
}

// Output collects what a process or a running Main writes, safe to read while
// another goroutine still writes.
type Output struct {
	mu sync.Mutex
	b  strings.Builder
}

func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.Write(p)
}

// String returns everything written so far.
func (o *Output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.String()
}
