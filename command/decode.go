package command

import (
	"math"
	"time"

	"github.com/valyala/fastjson"

	"github.com/keepwatch/keepwatch"
)

// The request bodies are small and fixed in shape, so they are parsed with a
// pooled fastjson parser instead of reflection: no allocation per field, and
// every type error is reported per field instead of at the first one.

// progressEvent is one decoded, validated event before its event time is fixed.
type progressEvent struct {
	videoID []byte // points into the parser's memory: copy before keeping
	state   keepwatch.State
	ts      int64
}

// timing is what the event time needs besides the event: the server's receive
// time and the limit on the age a device may claim.
type timing struct {
	received time.Time
	maxAge   time.Duration
}

func malformed(msg string) *keepwatch.Error {
	return &keepwatch.Error{Code: keepwatch.EMALFORMED, Message: msg}
}

// decodeProgress parses and validates the body of POST /v1/progress.
func decodeProgress(p *fastjson.Parser, body []byte, tm timing) (progressEvent, error) {
	if ev, ok := scanProgress(body, tm); ok {
		return ev, nil
	}
	return parseProgress(p, body, tm)
}

// parseProgress is decodeProgress for any body: it accepts the same events as
// scanProgress and explains every error.
func parseProgress(p *fastjson.Parser, body []byte, tm timing) (progressEvent, error) {
	// fastjson unescapes strings lazily, so a bad escape in a field nobody
	// reads would pass Parse: validate the whole document first.
	if fastjson.ValidateBytes(body) != nil {
		return progressEvent{}, malformed("the body is not valid JSON")
	}
	v, err := p.ParseBytes(body)
	if err != nil {
		return progressEvent{}, malformed("the body is not valid JSON")
	}
	o, err := v.Object()
	if err != nil {
		return progressEvent{}, malformed("the body must be a JSON object")
	}
	var errs []keepwatch.FieldError
	ev := decodeEvent(o, "", &errs)
	sentAt := optInt(o.Get("sent_at"), "sent_at", &errs)
	if len(errs) > 0 {
		return progressEvent{}, &keepwatch.Error{Code: keepwatch.EINVALID, Message: "the event has invalid fields", Fields: errs}
	}
	ev.state.EventTime = keepwatch.EventTime(tm.received, ev.ts, sentAt, tm.maxAge)
	return ev, nil
}

// decodeEvent reads the fields of one event object; prefix names it in errors
// ("events[3].").
func decodeEvent(o *fastjson.Object, prefix string, errs *[]keepwatch.FieldError) progressEvent {
	var ev progressEvent
	ev.state.Kind = keepwatch.KindProgress
	switch id := o.Get("video_id"); {
	case id == nil:
		*errs = append(*errs, keepwatch.FieldError{Field: prefix + "video_id", Detail: "is required"})
	case id.Type() != fastjson.TypeString:
		*errs = append(*errs, keepwatch.FieldError{Field: prefix + "video_id", Detail: "must be a string"})
	default:
		b, _ := id.StringBytes()
		if !keepwatch.ValidVideoID(b) {
			*errs = append(*errs, keepwatch.FieldError{Field: prefix + "video_id", Detail: "must be 1–128 characters of A-Z a-z 0-9 . _ : -"})
		}
		ev.videoID = b
	}
	switch pct := o.Get("percent"); {
	case pct == nil:
		*errs = append(*errs, keepwatch.FieldError{Field: prefix + "percent", Detail: "is required"})
	default:
		f, ok := number(pct)
		if !ok || !keepwatch.ValidPercent(f) {
			*errs = append(*errs, keepwatch.FieldError{Field: prefix + "percent", Detail: "must be a number from 0 to 100"})
		}
		ev.state.Percent = keepwatch.Round3(f)
	}
	ev.state.Position = optSeconds(o.Get("position"), prefix+"position", false, errs)
	ev.state.Duration = optSeconds(o.Get("duration"), prefix+"duration", true, errs)
	ev.ts = optInt(o.Get("ts"), prefix+"ts", errs)
	return ev
}

// number returns a JSON number's value.
func number(v *fastjson.Value) (float64, bool) {
	if v.Type() != fastjson.TypeNumber {
		return 0, false
	}
	return finite(v.Float64())
}

// finite is a parsed number's value; NaN and infinities are not numbers.
func finite(f float64, err error) (float64, bool) {
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, false
	}
	return f, true
}

// seconds is a number of seconds as stored, rounded to the millisecond, and
// whether it is valid: a duration that rounds to 0 is 0, and positive refuses it.
func seconds(f float64, positive bool) (float64, bool) {
	f = keepwatch.Round3(f)
	return f, keepwatch.ValidSeconds(f) && !(positive && f == 0)
}

// millis is a timestamp in ms since the epoch and whether it is valid.
func millis(f float64) (int64, bool) {
	if f < 0 || f > maxMillis || f != math.Trunc(f) {
		return 0, false
	}
	return int64(f), true
}

// optSeconds reads an optional number of seconds; absent or null is Unknown.
func optSeconds(v *fastjson.Value, field string, positive bool, errs *[]keepwatch.FieldError) float64 {
	if v == nil || v.Type() == fastjson.TypeNull {
		return keepwatch.Unknown
	}
	f, ok := number(v)
	f, valid := seconds(f, positive)
	if !ok || !valid {
		detail := "must be a number of seconds from 0 to 99999999.999"
		if positive {
			detail = "must be a number of seconds above 0 and at most 99999999.999"
		}
		*errs = append(*errs, keepwatch.FieldError{Field: field, Detail: detail})
		return keepwatch.Unknown
	}
	return f
}

// maxMillis bounds ts and sent_at: ms since the epoch, before year 2286.
const maxMillis = 9_999_999_999_999

// optInt reads an optional timestamp in ms since the epoch; absent or null is 0.
func optInt(v *fastjson.Value, field string, errs *[]keepwatch.FieldError) int64 {
	if v == nil || v.Type() == fastjson.TypeNull {
		return 0
	}
	f, ok := number(v)
	ms, valid := millis(f)
	if !ok || !valid {
		*errs = append(*errs, keepwatch.FieldError{Field: field, Detail: "must be a whole number of milliseconds since the Unix epoch"})
		return 0
	}
	return ms
}

// batchResult is the outcome of decoding a batch: the valid events and, per
// rejected index, why.
type batchResult struct {
	events   []progressEvent
	rejected []rejection
}

type rejection struct {
	Index  int                    `json:"index"`
	Errors []keepwatch.FieldError `json:"errors"`
}

// decodeBatch parses POST /v1/progress/batch. A malformed body or envelope is
// an error; invalid events are rejected one by one.
func decodeBatch(p *fastjson.Parser, body []byte, tm timing, maxEvents int) (batchResult, error) {
	if fastjson.ValidateBytes(body) != nil {
		return batchResult{}, malformed("the body is not valid JSON")
	}
	v, err := p.ParseBytes(body)
	if err != nil {
		return batchResult{}, malformed("the body is not valid JSON")
	}
	o, err := v.Object()
	if err != nil {
		return batchResult{}, malformed("the body must be a JSON object")
	}
	var envErrs []keepwatch.FieldError
	sentAt := optInt(o.Get("sent_at"), "sent_at", &envErrs)
	evs := o.Get("events")
	switch {
	case evs == nil:
		envErrs = append(envErrs, keepwatch.FieldError{Field: "events", Detail: "is required"})
	case evs.Type() != fastjson.TypeArray:
		envErrs = append(envErrs, keepwatch.FieldError{Field: "events", Detail: "must be an array"})
	}
	if len(envErrs) > 0 {
		return batchResult{}, &keepwatch.Error{Code: keepwatch.EINVALID, Message: "the batch has invalid fields", Fields: envErrs}
	}
	arr, _ := evs.Array()
	switch {
	case len(arr) == 0:
		return batchResult{}, &keepwatch.Error{Code: keepwatch.EINVALID, Message: "the batch is empty",
			Fields: []keepwatch.FieldError{{Field: "events", Detail: "must hold at least one event"}}}
	case len(arr) > maxEvents:
		return batchResult{}, &keepwatch.Error{Code: keepwatch.EINVALID, Message: "the batch has too many events",
			Fields: []keepwatch.FieldError{{Field: "events", Detail: "must hold at most " + itoa(maxEvents) + " events"}}}
	}
	res := batchResult{events: make([]progressEvent, 0, len(arr))}
	for i, ev := range arr {
		eo, err := ev.Object()
		if err != nil {
			// Field names inside a rejection are relative to the event; ""
			// is the event itself.
			res.rejected = append(res.rejected, rejection{Index: i, Errors: []keepwatch.FieldError{{Field: "", Detail: "must be an object"}}})
			continue
		}
		var errs []keepwatch.FieldError
		pe := decodeEvent(eo, "", &errs)
		if len(errs) > 0 {
			res.rejected = append(res.rejected, rejection{Index: i, Errors: errs})
			continue
		}
		pe.state.EventTime = keepwatch.EventTime(tm.received, pe.ts, sentAt, tm.maxAge)
		res.events = append(res.events, pe)
	}
	return res, nil
}

func itoa(i int) string {
	var b [20]byte
	n := len(b)
	if i == 0 {
		return "0"
	}
	for i > 0 {
		n--
		b[n] = byte('0' + i%10)
		i /= 10
	}
	return string(b[n:])
}
