package flush_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/keepwatch/keepwatch"
	"github.com/keepwatch/keepwatch/command/flush"
	"github.com/keepwatch/keepwatch/storage/mongo"
)

// BenchmarkFlush measures flush throughput: entries per second from the
// Redis buffer to the MongoDB test server, claim and release included.
//
// Against the default test server this is FerretDB's speed (embedded, SQLite,
// where every _id lookup scans the collection), not MongoDB's: it shows the
// flusher's own overhead and regressions, never what a MongoDB replica set
// sustains. Point KEEPWATCH_TEST_MONGO_URI at a MongoDB to measure that.
//
//	go test -run '^$' -bench Flush -benchtime 20x ./command/flush
func BenchmarkFlush(b *testing.B) {
	ctx := context.Background()
	e := newEnv(b, nil, mongo.Options{})
	f, _ := newFlusher(b, e.buf, e.store, flush.Config{Batch: 500, Parallelism: 2})
	// A fixed, small set of 200 documents, so that the collection (and
	// FerretDB's scans, which make each write cost grow with it) stays the
	// same size: each iteration updates all of them. At 2,000 documents
	// FerretDB manages about 30 entries/s here.
	const users, videos, perIter = 10, 20, 200
	keys := make([]keepwatch.Progress, 0, users*videos)
	for u := range users {
		for v := range videos {
			keys = append(keys, keepwatch.Progress{UserID: fmt.Sprintf("user-%d", u), VideoID: fmt.Sprintf("video-%d", v)})
		}
	}
	fill := func(t int64, from int) {
		batch := make([]keepwatch.Progress, 0, perIter)
		for i := range perIter {
			p := keys[(from+i)%len(keys)]
			p.State = keepwatch.State{EventTime: t, Percent: float64(t % 100), Position: float64(t), Duration: 1e4}
			batch = append(batch, p)
		}
		e.apply(batch...)
	}
	for i := 0; i < len(keys); i += perIter {
		fill(1, i)
	}
	if _, err := f.FlushOnce(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	var flushed int
	var spent time.Duration
	for i := range b.N {
		b.StopTimer()
		fill(int64(2+i), i*perIter)
		b.StartTimer()
		start := time.Now()
		st, err := f.FlushOnce(ctx)
		spent += time.Since(start)
		if err != nil {
			b.Fatal(err)
		}
		flushed += st.Entries
	}
	b.ReportMetric(float64(flushed)/spent.Seconds(), "entries/s")
}
