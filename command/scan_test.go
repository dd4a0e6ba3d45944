package command

import (
	"testing"
)

// TestScanTakesPlayerBodies checks that what players ordinarily send takes the
// single pass, and decodes as the full parser does. The fuzz test covers
// everything else.
func TestScanTakesPlayerBodies(t *testing.T) {
	bodies := append([]string{
		// The body of DESIGN.md and the OpenAPI example, as players send it.
		`{"video_id":"v-123","percent":42.5,"position":1234.5,"duration":2700,"ts":1732240000000,"sent_at":1732240000350}`,
		"{\n  \"video_id\": \"v-123\",\n  \"percent\": 42.5\n}\n",
		`{"video_id":"v","percent":1,"client":"web/5.1","muted":false,"quality":null,"bitrate":4500}`,
		// A series' episode, as the SDK sends it.
		`{"video_id":"tt0903747:s01e02","percent":42.5,"position":1234.5,"duration":2700,"ts":1732240000000,"sent_at":1732240000350,"series_id":"tt0903747","episode":2}`,
		`{"video_id":"v","percent":100,"completed":true,"series_id":null,"episode":null}`,
		`{"video_id":"v","percent":30,"completed":false,"episode":1.5}`,
	}, progressSeeds[:7]...)
	for _, body := range bodies {
		fast, ok := scanProgress([]byte(body), fuzzTiming)
		if !ok {
			t.Errorf("%s: not taken by the single pass", body)
			continue
		}
		slow, err := newDecoder().parseProgress([]byte(body), fuzzTiming)
		if err != nil || string(fast.videoID) != string(slow.videoID) || fast.entry() != slow.entry() {
			t.Errorf("%s: scanner %+v, parser %+v, %v", body, fast.state, slow.state, err)
		}
	}
	for _, body := range []string{
		`{"video_id":"\u0041","percent":1}`,                // an escape: the parser unescapes
		`{"video_id":"v","percent":1,"x":{"nested":true}}`, // nesting
		`{"video_id":"v","percent":101}`,                   // invalid: the parser explains
		`{"video_id":"v","percent":1,"percent":2}`,         // a repeated field
		`{"video_id":"v","percent":1} x`,                   // trailing bytes
		`{"video_id":"v","percent":1,"series_id":"a b"}`,   // invalid: the parser explains
		`{"video_id":"v","percent":1,"completed":1}`,       // mistyped
	} {
		if _, ok := scanProgress([]byte(body), fuzzTiming); ok {
			t.Errorf("%s: taken by the single pass, want the parser", body)
		}
	}
}

// BenchmarkDecodeProgress compares, on the body players send, the single pass
// with the validate-then-parse path every other body takes.
func BenchmarkDecodeProgress(b *testing.B) {
	body := []byte(`{"video_id":"tt0111161:s01e02","percent":42.5,"position":1234.5,"duration":2700,"ts":1732240000000,"sent_at":1732240000350}`)
	series := []byte(`{"video_id":"tt0111161:s01e02","percent":42.5,"position":1234.5,"duration":2700,"ts":1732240000000,"sent_at":1732240000350,"series_id":"tt0111161","episode":2}`)
	b.Run("scan", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := scanProgress(body, fuzzTiming); !ok {
				b.Fatal("refused")
			}
		}
	})
	b.Run("parse", func(b *testing.B) {
		d := newDecoder()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := d.parseProgress(body, fuzzTiming); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("scan-series", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := scanProgress(series, fuzzTiming); !ok {
				b.Fatal("refused")
			}
		}
	})
}
