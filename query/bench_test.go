package query_test

import (
	"fmt"
	"testing"

	"github.com/valyala/fasthttp"
)

// BenchmarkKeepWatching serves a realistic user's keep-watching row: 50
// videos in MongoDB (5 of them finished) and 3 entries pending in Redis (one
// newer progress, one removal, one new video), through the whole handler
// (auth with a cached token, Redis HGETALL, MongoDB find, merge, JSON, ETag)
// but without a network socket. Against the embedded FerretDB it measures
// FerretDB's table scan more than keepwatch; set KEEPWATCH_TEST_MONGO_URI for
// a real MongoDB.
func BenchmarkKeepWatching(b *testing.B) {
	e := newEnv(b)
	for i := range 50 {
		pct := float64(i)
		if i%10 == 9 {
			pct = 100
		}
		e.stored("alice", fmt.Sprintf("video-%02d", i), at(base+int64(i)*60_000, pct))
	}
	e.pend("alice", "video-10", at(base+100*60_000, 55))
	e.pend("alice", "video-20", deleted(base+101*60_000))
	e.pend("alice", "brand-new", at(base+102*60_000, 1))

	h := e.shell.Handler()
	var rc fasthttp.RequestCtx
	rc.Request.Header.SetMethod(fasthttp.MethodGet)
	rc.Request.SetRequestURI("/v1/keep-watching")
	rc.Request.Header.Set("Authorization", "Bearer "+token(b, "alice"))
	h(&rc)
	if rc.Response.StatusCode() != 200 {
		b.Fatalf("status %d: %s", rc.Response.StatusCode(), rc.Response.Body())
	}
	etag := string(rc.Response.Header.Peek("ETag"))

	run := func(b *testing.B, want int) {
		b.ReportAllocs()
		for b.Loop() {
			rc.Response.Reset()
			h(&rc)
			if rc.Response.StatusCode() != want {
				b.Fatalf("status %d: %s", rc.Response.StatusCode(), rc.Response.Body())
			}
		}
	}
	b.Run("200", func(b *testing.B) { run(b, 200) })
	b.Run("304", func(b *testing.B) {
		rc.Request.Header.Set("If-None-Match", etag)
		run(b, 304)
	})
}
