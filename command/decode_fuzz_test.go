package command

import (
	"errors"
	"math"
	"testing"
	"time"

	"github.com/valyala/fastjson"

	"github.com/keepwatch/keepwatch"
)

// fuzzTiming is the receive time and age limit every fuzzed body is decoded
// with: a realistic server clock and the default maximum age.
var fuzzTiming = timing{received: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC), maxAge: 7 * 24 * time.Hour}

// newDecoder is the full parser with the default bounds.
func newDecoder() *decoder { return &decoder{maxDepth: DefaultConfig().MaxJSONDepth} }

// progressSeeds are bodies worth starting from; the corpus in
// testdata/fuzz/FuzzDecodeProgress holds more.
var progressSeeds = []string{
	`{"video_id":"v","percent":42.5,"position":1234.5,"duration":2700,"ts":1732240000000,"sent_at":1732240000350}`,
	`{"video_id":"a.b:c-d_e","percent":100}`,
	`{"video_id":"v","percent":0,"position":0,"duration":0.001}`,
	`{"video_id":"v","percent":-0,"position":99999999.999,"duration":99999999.999}`,
	`{"video_id":"v","percent":99.9996,"position":null,"duration":null,"ts":null,"sent_at":null}`,
	`{"video_id":"v","percent":1e2,"ts":9999999999999,"sent_at":9999999999999}`,
	`{"video_id":"v","percent":1,"ts":1,"sent_at":9999999999999}`,
	`{"video_id":"\u0041","percent":1}`,
	`{"video_id":"","percent":101,"position":-1,"duration":0,"ts":-1,"sent_at":"x"}`,
	`{"video_id":"v","percent":NaN}`,
	`{"video_id":"v","percent":1e999}`,
	`{"video_id":"v","percent":1,"ts":1.5}`,
	`{"video_id":"s01e02","percent":12,"series_id":"tt0903747","episode":2,"completed":false}`,
	`{"video_id":"v","percent":99,"series_id":null,"episode":null,"completed":null}`,
	`{"video_id":"v","percent":99,"completed":true,"episode":0}`,
	`{"video_id":"v","percent":1,"series_id":"","episode":-1,"completed":1}`,
	`{"video_id":"v","percent":1,"series_id":"a b","episode":100000000,"completed":"true"}`,
	`{"percent":1}`,
	`[]`, `null`, `"x"`, ``, `{`, `{"video_id":"v","percent":1}x`,
}

// checkState fails unless st is a state the buffer may store.
func checkState(t *testing.T, st keepwatch.State) {
	t.Helper()
	tm := fuzzTiming
	recv := tm.received.UnixMilli()
	switch {
	case st.Kind != keepwatch.KindProgress:
		t.Fatalf("kind %d", st.Kind)
	case math.IsNaN(st.Percent) || !keepwatch.ValidPercent(st.Percent):
		t.Fatalf("percent %v", st.Percent)
	case st.Position != keepwatch.Unknown && (math.IsNaN(st.Position) || !keepwatch.ValidSeconds(st.Position)):
		t.Fatalf("position %v", st.Position)
	case st.Duration != keepwatch.Unknown && (math.IsNaN(st.Duration) || !keepwatch.ValidSeconds(st.Duration) || st.Duration <= 0):
		t.Fatalf("duration %v", st.Duration)
	case st.Episode != keepwatch.Unknown && (math.IsNaN(st.Episode) || !keepwatch.ValidSeconds(st.Episode)):
		t.Fatalf("episode %v", st.Episode)
	case st.EventTime > recv || st.EventTime < recv-tm.maxAge.Milliseconds():
		t.Fatalf("event time %d outside [%d, %d]", st.EventTime, recv-tm.maxAge.Milliseconds(), recv)
	}
	for _, v := range []float64{st.Percent, st.Position, st.Duration, st.Episode} {
		if v != keepwatch.Round3(v) {
			t.Fatalf("%v is not rounded to three decimals", v)
		}
	}
	// What the buffer stores must decode to the same state.
	enc := st.Encode()
	if len(enc) < keepwatch.EncodedLen || len(enc) > keepwatch.MaxEncodedLen {
		t.Fatalf("encoding %q has length %d, want %d to %d", enc, len(enc), keepwatch.EncodedLen, keepwatch.MaxEncodedLen)
	}
	back, err := keepwatch.DecodeState(enc)
	if err != nil || back != st {
		t.Fatalf("state %+v encodes to %q which decodes to %+v, %v", st, enc, back, err)
	}
}

// checkError fails unless err is a client error of the decoder.
func checkError(t *testing.T, err error) {
	t.Helper()
	var ke *keepwatch.Error
	if !errors.As(err, &ke) {
		t.Fatalf("error %v (%T) is not a *keepwatch.Error", err, err)
	}
	switch ke.Code {
	case keepwatch.EMALFORMED:
	case keepwatch.EINVALID:
		if len(ke.Fields) == 0 {
			t.Fatalf("invalid without fields: %v", err)
		}
		for _, f := range ke.Fields {
			if f.Field == "" || f.Detail == "" {
				t.Fatalf("field error %+v is incomplete", f)
			}
		}
	default:
		t.Fatalf("code %q, want malformed or invalid", ke.Code)
	}
}

func FuzzDecodeProgress(f *testing.F) {
	for _, s := range progressSeeds {
		f.Add([]byte(s))
	}
	for _, tc := range ReadCorpus(f, "single.txt") {
		f.Add(tc.Body)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		ev, err := newDecoder().decodeProgress(body, fuzzTiming)
		if err != nil {
			checkError(t, err)
			return
		}
		if !keepwatch.ValidVideoID(ev.videoID) {
			t.Fatalf("video id %q", ev.videoID)
		}
		checkState(t, ev.entry().State)
	})
}

// FuzzScanProgress holds the single-pass scanner to its promise: whatever it
// accepts, the full parser accepts as the same event. (What it refuses goes
// to the full parser, so refusing is always safe.)
func FuzzScanProgress(f *testing.F) {
	for _, s := range progressSeeds {
		f.Add([]byte(s))
	}
	for _, s := range scanSeeds {
		f.Add([]byte(s))
	}
	for _, tc := range ReadCorpus(f, "single.txt") {
		f.Add(tc.Body)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		fast, ok := scanProgress(body, fuzzTiming)
		if !ok {
			return
		}
		slow, err := newDecoder().parseProgress(body, fuzzTiming)
		if err != nil {
			t.Fatalf("the scanner accepted %q, the parser refuses it: %v", body, err)
		}
		if string(fast.videoID) != string(slow.videoID) || string(fast.seriesID) != string(slow.seriesID) ||
			fast.state != slow.state || fast.ts != slow.ts {
			t.Fatalf("%q: scanner %+v (video %q), parser %+v (video %q)", body, fast, fast.videoID, slow, slow.videoID)
		}
	})
}

// scanSeeds are shapes near the scanner's edges: what it must accept and what
// it must leave to the parser.
var scanSeeds = []string{
	" {\t\"video_id\" : \"v\" ,\r\n\"percent\":1.5e1 } \n",
	`{"percent":1,"video_id":"v","extra":"x","more":[1],"n":null,"t":true,"f":false}`,
	`{"video_id":"v","percent":1,"percent":2}`,
	`{"video_id":"v","video_id":"w","percent":1}`,
	`{"video_id":"v","percent":01}`,
	`{"video_id":"v","percent":1.}`,
	`{"video_id":"v","percent":.5}`,
	`{"video_id":"v","percent":-0.0e-0}`,
	`{"video_id":"v","percent":1E+2,"position":1e-400}`,
	`{"video_id":"v","percent":null}`,
	`{"video_id":"v","percent":1,"ts":1e3,"sent_at":2E3}`,
	`{"video_id":"v","percent":1,"x":"\u00e9"}`,
	`{"video_id":"v","percent":1,"x":"\xff"}`,
	`{"video_id":"v","percent":1,"x":"\x01"}`,
	`{"video_id":"v","percent":1,}`,
	`{"video_id":"v" "percent":1}`,
	`{"video_id":"v","percent":1}}`,
	`{"video_id":"v","percent":1,"series_id":"s","series_id":"t"}`,
	`{"video_id":"v","percent":1,"episode":1,"episode":2}`,
	`{"video_id":"v","percent":1,"completed":true,"completed":false}`,
	`{"video_id":"v","percent":1,"Series_ID":"s"}`,
	`{"video_id":"v","percent":1,"completed":tru}`,
	`{"video_id":"v","percent":1,"series_id":"\u0041"}`,
	`{"video_id":"v","percent":1,"episode":1e-4}`,
	`{}`,
}

const fuzzMaxEvents = 5

func FuzzDecodeBatch(f *testing.F) {
	f.Add([]byte(`{"sent_at":1732240000350,"events":[{"video_id":"v","percent":42.5,"ts":1732240000000},{"video_id":"w","percent":1}]}`))
	f.Add([]byte(`{"events":[{"video_id":"a","percent":10},{"video_id":"b","percent":200},42,{"video_id":"e/","percent":-1,"ts":"x"}]}`))
	f.Add([]byte(`{"events":[]}`))
	f.Add([]byte(`{"events":[1,2,3,4,5,6]}`))
	f.Add([]byte(`{"events":null,"sent_at":-1}`))
	f.Add([]byte(`{"sent_at":1,"events":[{"video_id":"v","percent":1,"ts":9999999999999}]}`))
	f.Add([]byte(`[{"video_id":"v","percent":1}]`))
	for _, tc := range ReadCorpus(f, "batch.txt") {
		f.Add(tc.Body)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		res, err := newDecoder().decodeBatch(body, fuzzTiming, fuzzMaxEvents)
		if err != nil {
			checkError(t, err)
			return
		}
		// The decoder accepted the envelope, so an independent parse finds
		// the events array; every element is either an event or a rejection.
		var q fastjson.Parser
		v, perr := q.ParseBytes(body)
		if perr != nil {
			t.Fatalf("decoded a body another parse refuses: %v", perr)
		}
		n := len(v.GetArray("events"))
		if n == 0 || n > fuzzMaxEvents {
			t.Fatalf("decoded a batch of %d events (max %d)", n, fuzzMaxEvents)
		}
		if len(res.events)+len(res.rejected) != n {
			t.Fatalf("%d events + %d rejected != %d elements", len(res.events), len(res.rejected), n)
		}
		last := -1
		for _, r := range res.rejected {
			if r.Index <= last || r.Index >= n || len(r.Errors) == 0 {
				t.Fatalf("rejection %+v after index %d of %d", r, last, n)
			}
			last = r.Index
		}
		for _, ev := range res.events {
			if !keepwatch.ValidVideoID(ev.videoID) {
				t.Fatalf("video id %q", ev.videoID)
			}
			checkState(t, ev.entry().State)
		}
	})
}
