package command

import (
	"bytes"
	"time"
	"unicode/utf8"

	"github.com/valyala/fastjson"

	"github.com/keepwatch/keepwatch"
	"github.com/keepwatch/keepwatch/internal/ijson"
)

// The request bodies are small and fixed in shape, so they are parsed with a
// pooled fastjson parser instead of reflection: no allocation per field, and
// every type error is reported per field instead of at the first one.

// progressEvent is one decoded, validated event before its event time is fixed.
type progressEvent struct {
	videoID []byte // points into the parser's memory: copy before keeping
	// seriesID is the series (nil: none); like videoID it points into the
	// parser's memory, and entry copies it into the state.
	seriesID []byte
	state    keepwatch.State
	ts       int64
}

// entry is the event as the buffer stores it, its ids copied out of the
// request's memory.
func (ev *progressEvent) entry() keepwatch.Entry {
	st := ev.state
	if len(ev.seriesID) > 0 {
		st.SeriesID = string(ev.seriesID)
	}
	return keepwatch.Entry{VideoID: string(ev.videoID), State: st}
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

// eventFields are the keys of an event (of a batch's event: all but
// sent_at, the last), and batchFields those of a batch's envelope. A key
// that differs from one of them only in case is refused: encoding/json
// matches keys to fields ignoring case (folding ſ to s and K to k too), so a
// Go gateway would read "PERCENT" as the percent that keepwatch ignores.
var (
	eventFields = [...]string{"video_id", "percent", "position", "duration", "ts", "series_id", "episode", "completed", "sent_at"}
	batchFields = [...]string{"sent_at", "events"}
)

// batchEventFields are the keys of a batch's event.
var batchEventFields = eventFields[:len(eventFields)-1]

// Details of the field errors the scanner leaves to the parser to explain.
const (
	idDetail      = "must be 1–128 characters of A-Z a-z 0-9 . _ : -"
	episodeDetail = "must be a number from 0 to 99999999.999"
)

// decoder is the memory the full parser reuses from request to request.
type decoder struct {
	p        fastjson.Parser
	c        ijson.Checker
	maxDepth int
	num      []byte // the number token being read
}

// decodeProgress parses and validates the body of POST /v1/progress.
func (d *decoder) decodeProgress(body []byte, tm timing) (progressEvent, error) {
	if ev, ok := scanProgress(body, tm); ok {
		return ev, nil
	}
	return d.parseProgress(body, tm)
}

// object checks that body is one I-JSON object and parses it.
func (d *decoder) object(body []byte) (*fastjson.Object, error) {
	// fastjson keeps the first of two equal keys where encoding/json keeps
	// the last, and it unescapes strings lazily, so a bad escape in a field
	// nobody reads would pass Parse: check the whole document first.
	if err := d.c.Check(body, d.maxDepth); err != nil {
		return nil, malformed("the body is not I-JSON (RFC 7493): " + err.Error())
	}
	v, err := d.p.ParseBytes(body)
	if err != nil {
		return nil, malformed("the body is not valid JSON")
	}
	o, err := v.Object()
	if err != nil {
		return nil, malformed("the body must be a JSON object")
	}
	return o, nil
}

// sameButCase refuses a key of o that differs from one of names only in
// case.
func sameButCase(o *fastjson.Object, names []string, where string) error {
	var err error
	o.Visit(func(k []byte, _ *fastjson.Value) {
		if n, ok := caseVariant(k, names); ok && err == nil {
			err = malformed("the key " + ijson.QuoteKey(string(k)) + where + " differs from \"" + n + "\" only in case")
		}
	})
	return err
}

// caseVariant returns the name of names that key equals ignoring case (by
// Unicode simple folding, as encoding/json and bytes.EqualFold do) without
// being it.
func caseVariant(key []byte, names []string) (string, bool) {
	ascii := true
	for _, c := range key {
		if c >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	for _, n := range names {
		switch {
		case string(key) == n:
		case ascii && len(key) == len(n) && asciiFold(key, n):
			return n, true
		case !ascii && bytes.EqualFold(key, []byte(n)): // ſ folds to s, K to k
			return n, true
		}
	}
	return "", false
}

// asciiFold reports whether ASCII a equals f (lower case) ignoring case.
func asciiFold(a []byte, f string) bool {
	for i, c := range a {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != f[i] {
			return false
		}
	}
	return true
}

// parseProgress is decodeProgress for any body: it accepts the same events as
// scanProgress and explains every error.
func (d *decoder) parseProgress(body []byte, tm timing) (progressEvent, error) {
	o, err := d.object(body)
	if err != nil {
		return progressEvent{}, err
	}
	if err := sameButCase(o, eventFields[:], ""); err != nil {
		return progressEvent{}, err
	}
	var errs []keepwatch.FieldError
	ev := d.decodeEvent(o, &errs)
	sentAt := d.optMillis(o.Get("sent_at"), "sent_at", &errs)
	if len(errs) > 0 {
		return progressEvent{}, &keepwatch.Error{Code: keepwatch.EINVALID, Message: "the event has invalid fields", Fields: errs}
	}
	ev.state.EventTime = keepwatch.EventTime(tm.received, ev.ts, sentAt, tm.maxAge)
	return ev, nil
}

// decodeEvent reads the fields of one event object.
func (d *decoder) decodeEvent(o *fastjson.Object, errs *[]keepwatch.FieldError) progressEvent {
	var ev progressEvent
	ev.state.Kind = keepwatch.KindProgress
	switch id := o.Get("video_id"); {
	case id == nil:
		*errs = append(*errs, keepwatch.FieldError{Field: "video_id", Detail: "is required"})
	case id.Type() != fastjson.TypeString:
		*errs = append(*errs, keepwatch.FieldError{Field: "video_id", Detail: "must be a string"})
	default:
		b, _ := id.StringBytes()
		if !keepwatch.ValidVideoID(b) {
			*errs = append(*errs, keepwatch.FieldError{Field: "video_id", Detail: idDetail})
		}
		ev.videoID = b
	}
	switch sid := o.Get("series_id"); {
	case sid == nil || sid.Type() == fastjson.TypeNull:
	case sid.Type() != fastjson.TypeString:
		*errs = append(*errs, keepwatch.FieldError{Field: "series_id", Detail: "must be a string or null"})
	default:
		b, _ := sid.StringBytes()
		if !keepwatch.ValidVideoID(b) {
			*errs = append(*errs, keepwatch.FieldError{Field: "series_id", Detail: idDetail})
		}
		ev.seriesID = b
	}
	ev.state.Episode = keepwatch.Unknown
	if v := o.Get("episode"); v != nil && v.Type() != fastjson.TypeNull {
		n, ok := d.number(v)
		if ok {
			ev.state.Episode, ok = secondsOf(n, false)
		}
		if !ok {
			*errs = append(*errs, keepwatch.FieldError{Field: "episode", Detail: episodeDetail})
		}
	}
	switch c := o.Get("completed"); {
	case c == nil || c.Type() == fastjson.TypeNull:
	case c.Type() == fastjson.TypeTrue:
		ev.state.Completed = true
	case c.Type() != fastjson.TypeFalse:
		*errs = append(*errs, keepwatch.FieldError{Field: "completed", Detail: "must be true, false or null"})
	}
	switch pct := o.Get("percent"); {
	case pct == nil:
		*errs = append(*errs, keepwatch.FieldError{Field: "percent", Detail: "is required"})
	default:
		n, ok := d.number(pct)
		if ok {
			ev.state.Percent, ok = percentOf(n)
		}
		if !ok {
			*errs = append(*errs, keepwatch.FieldError{Field: "percent", Detail: "must be a number from 0 to 100"})
		}
	}
	ev.state.Position = d.optSeconds(o.Get("position"), "position", false, errs)
	ev.state.Duration = d.optSeconds(o.Get("duration"), "duration", true, errs)
	ev.ts = d.optMillis(o.Get("ts"), "ts", errs)
	return ev
}

// number returns a JSON number's token as the body spells it (ijson checked
// its grammar), valid until the next call.
func (d *decoder) number(v *fastjson.Value) ([]byte, bool) {
	if v.Type() != fastjson.TypeNumber {
		return nil, false
	}
	d.num = v.MarshalTo(d.num[:0])
	return d.num, true
}

// optSeconds reads an optional number of seconds; absent or null is Unknown.
func (d *decoder) optSeconds(v *fastjson.Value, field string, duration bool, errs *[]keepwatch.FieldError) float64 {
	if v == nil || v.Type() == fastjson.TypeNull {
		return keepwatch.Unknown
	}
	n, ok := d.number(v)
	var f float64
	if ok {
		f, ok = secondsOf(n, duration)
	}
	if !ok {
		detail := "must be a number of seconds from 0 to 99999999.999"
		if duration {
			detail = "must be a number of seconds from 0.001 to 99999999.999"
		}
		*errs = append(*errs, keepwatch.FieldError{Field: field, Detail: detail})
		return keepwatch.Unknown
	}
	return f
}

// optMillis reads an optional timestamp in ms since the epoch; absent or
// null is 0.
func (d *decoder) optMillis(v *fastjson.Value, field string, errs *[]keepwatch.FieldError) int64 {
	if v == nil || v.Type() == fastjson.TypeNull {
		return 0
	}
	n, ok := d.number(v)
	var ms int64
	if ok {
		ms, ok = millisOf(n)
	}
	if !ok {
		*errs = append(*errs, keepwatch.FieldError{Field: field, Detail: "must be a whole number of milliseconds since the Unix epoch, at most 9999999999999"})
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
// an error; invalid events are rejected one by one. A repeated key anywhere,
// or a key that differs from a field's name only in case, is an error for
// the whole batch: the body is ambiguous.
func (d *decoder) decodeBatch(body []byte, tm timing, maxEvents int) (batchResult, error) {
	o, err := d.object(body)
	if err != nil {
		return batchResult{}, err
	}
	if err := sameButCase(o, batchFields[:], ""); err != nil {
		return batchResult{}, err
	}
	var envErrs []keepwatch.FieldError
	sentAt := d.optMillis(o.Get("sent_at"), "sent_at", &envErrs)
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
	for i, ev := range arr {
		if eo, err := ev.Object(); err == nil {
			if err := sameButCase(eo, batchEventFields, " of events["+itoa(i)+"]"); err != nil {
				return batchResult{}, err
			}
		}
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
		pe := d.decodeEvent(eo, &errs)
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
