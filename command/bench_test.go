package command_test

import (
	"net/http"
	"testing"

	"github.com/valyala/fasthttp"
)

// benchBody is the body DESIGN.md shows, as a player sends it.
var benchBody = []byte(`{"video_id":"tt0111161:s01e02","percent":42.5,"position":1234.5,"duration":2700,"ts":1732240000000,"sent_at":1732240000350}`)

// benchPost drives POST /v1/progress through the server's fasthttp handler
// (the edge's framing check included), with no connection or HTTP parsing in
// between: each goroutine is one player
// (its own user and token) reusing one request, as a player does.
func benchPost(b *testing.B, e *env) {
	h := e.shell.Handler()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		user := e.user("bench")
		tok, err := authHeader(user)
		if err != nil {
			b.Error(err)
			return
		}
		var ctx fasthttp.RequestCtx
		ctx.Request.Header.SetMethod(http.MethodPost)
		ctx.Request.SetRequestURI("/v1/progress")
		ctx.Request.Header.SetContentType("application/json")
		ctx.Request.Header.Set("Authorization", tok)
		ctx.Request.SetBody(benchBody)
		for pb.Next() {
			ctx.Response.Reset()
			h(&ctx)
			if s := ctx.Response.StatusCode(); s != http.StatusAccepted {
				b.Errorf("status %d: %s", s, ctx.Response.Body())
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}

// BenchmarkPostProgress measures one accepted progress post, stored in a real
// redis-server, with the default configuration.
func BenchmarkPostProgress(b *testing.B) {
	benchPost(b, newEnv(b))
}

// BenchmarkGroupCommit compares one Redis round trip per request (MaxBatch 1)
// with group commit (MaxBatch 256), both with 4 round trips in flight, under
// 64 concurrent callers per CPU.
func BenchmarkGroupCommit(b *testing.B) {
	for _, tc := range []struct {
		name     string
		maxBatch int
	}{
		{"round-trip-per-request", 1},
		{"group-commit", 256},
	} {
		b.Run(tc.name, func(b *testing.B) {
			e := newEnv(b, func(s *setup) {
				s.cfg.Commit.MaxBatch = tc.maxBatch
				s.cfg.Commit.Workers = 4
				s.cfg.Commit.Window = 0
			})
			b.SetParallelism(64)
			benchPost(b, e)
			if h := e.histogram("keepwatch_commit_batch_size"); h.GetSampleCount() > 0 {
				b.ReportMetric(h.GetSampleSum()/float64(h.GetSampleCount()), "req/roundtrip")
			}
		})
	}
}
