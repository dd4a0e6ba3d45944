package query

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/keepwatch/keepwatch"
)

// Exporter reads everything MongoDB holds of a user, for the export.
// Errors wrap keepwatch.ErrUnavailable when the server cannot be reached;
// an error visit returns stops the reading and is returned as it is.
type Exporter interface {
	// ExportProgress calls visit with each of the user's progress
	// documents, removals and the erase included.
	ExportProgress(ctx context.Context, userID string, visit func(keepwatch.Progress) error) error
	// ExportDeadLetters calls visit with each of the user's dead-letter
	// entries and the id of its dead letter.
	ExportDeadLetters(ctx context.Context, userID string, visit func(deadLetterID string, e keepwatch.DeadEntry) error) error
}

// ExportSources are where an export reads a user's data.
type ExportSources struct {
	Store   Store
	Export  Exporter
	Pending Pending // nil: the buffer is not read, and the header line says so
}

// Export is one user's export, ready to be written: Prepare reads what must
// be known before the first line (the user's erase, in MongoDB and pending in
// Redis), so that the errors an HTTP client should see as a status come
// before the stream starts; WriteTo streams the rest.
type Export struct {
	src     ExportSources
	rules   keepwatch.Rules
	userID  string
	at      time.Time
	pending []keepwatch.Progress
	erase   int64 // the newest erase, -1: none
	erases  []exportErase
	sources []string
}

type exportErase struct {
	source string
	at     int64
}

// Sources of export lines.
const (
	sourceMongo      = "mongodb"
	sourceBuffer     = "buffer"
	sourceDeadLetter = "dead_letter"
)

// PrepareExport reads the user's erase and pending entries. Its errors wrap
// keepwatch.ErrUnavailable when a store cannot be reached.
func PrepareExport(ctx context.Context, src ExportSources, rules keepwatch.Rules, userID string, at time.Time) (*Export, error) {
	x := &Export{src: src, rules: rules, userID: userID, at: at, erase: -1, sources: []string{sourceMongo, sourceDeadLetter}}
	if src.Pending != nil {
		p, err := src.Pending.Pending(ctx, userID)
		if err != nil {
			return nil, fmt.Errorf("export: read pending entries: %w", err)
		}
		x.pending = p
		x.sources = append(x.sources, sourceBuffer)
	}
	stored, err := src.Store.Progress(ctx, userID, nil)
	if err != nil {
		return nil, fmt.Errorf("export: read the erase: %w", err)
	}
	for _, ps := range [][]keepwatch.Progress{stored, x.pending} {
		for _, p := range ps {
			if p.VideoID == "" {
				x.erase = max(x.erase, p.EventTime)
			}
		}
	}
	return x, nil
}

// WriteTo streams the export as NDJSON (docs/api.md has the line schema):
// a header line; the user's MongoDB documents newest first; their pending
// buffer entries; their dead-letter entries; the erases; and an end line
// counting the lines before it, whose absence tells a client the export
// broke off.
// What an erase covers is left out, as every read leaves it out. Memory
// stays constant whatever the user's history: documents are written as the
// cursors yield them.
func (x *Export) WriteTo(ctx context.Context, w io.Writer) (int64, error) {
	bw := bufio.NewWriterSize(w, 16<<10)
	ew := exportWriter{w: bw, rules: x.rules}
	b := make([]byte, 0, 512)
	b = append(b, `{"record":"export","user_id":`...)
	b = appendJSONString(b, x.userID)
	b = append(b, `,"exported_at":"`...)
	b = appendTime(b, x.at.UnixMilli())
	b = append(b, `","sources":[`...)
	for i, s := range x.sources {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, s)
	}
	b = append(b, "]}\n"...)
	ew.line(b)
	err := x.src.Export.ExportProgress(ctx, x.userID, func(p keepwatch.Progress) error {
		if p.VideoID == "" {
			x.erases = append(x.erases, exportErase{sourceMongo, p.EventTime})
			return nil
		}
		if p.EventTime > x.erase {
			ew.state(sourceMongo, p, "", "")
		}
		return ew.err
	})
	if err == nil {
		for _, p := range x.pending {
			if p.VideoID == "" {
				x.erases = append(x.erases, exportErase{sourceBuffer, p.EventTime})
			} else if p.EventTime > x.erase {
				ew.state(sourceBuffer, p, "", "")
			}
		}
		err = x.src.Export.ExportDeadLetters(ctx, x.userID, func(id string, e keepwatch.DeadEntry) error {
			if e.EventTime > x.erase {
				ew.state(sourceDeadLetter, e.Progress, id, e.Error)
			}
			return ew.err
		})
	}
	if err == nil {
		for _, e := range x.erases {
			b = append(b[:0], `{"record":"erasure","source":"`...)
			b = append(b, e.source...)
			b = append(b, `","erased_at":"`...)
			b = appendTime(b, e.at)
			b = append(b, "\"}\n"...)
			ew.line(b)
		}
		b = append(b[:0], `{"record":"end","records":`...)
		b = strconv.AppendInt(b, ew.records, 10)
		b = append(b, "}\n"...)
		ew.line(b)
		err = ew.err
	}
	if ferr := bw.Flush(); err == nil {
		err = ferr
	}
	if err != nil && !errors.Is(err, ew.err) {
		err = fmt.Errorf("export %s: %w", x.userID, err)
	}
	return ew.written, err
}

// exportWriter writes lines, keeping the first error.
type exportWriter struct {
	w       *bufio.Writer
	rules   keepwatch.Rules
	records int64
	written int64
	err     error
	b       []byte
}

func (ew *exportWriter) line(b []byte) {
	if ew.err != nil {
		return
	}
	n, err := ew.w.Write(b)
	ew.written += int64(n)
	ew.err = err
	ew.records++
}

// state writes one progress or removal line.
func (ew *exportWriter) state(source string, p keepwatch.Progress, deadLetter, errMsg string) {
	b := ew.b[:0]
	if p.Deleted() {
		b = append(b, `{"record":"removal"`...)
	} else {
		b = append(b, `{"record":"progress"`...)
	}
	b = append(b, `,"source":"`...)
	b = append(b, source...)
	b = append(b, '"')
	if deadLetter != "" {
		b = append(b, `,"dead_letter_id":"`...)
		b = append(b, deadLetter...)
		b = append(b, '"')
	}
	if errMsg != "" {
		b = append(b, `,"error":`...)
		b = appendJSONString(b, errMsg)
	}
	b = append(b, ',')
	b = appendItemFields(b, p, ew.rules.Finished(p.State) && !p.Deleted())
	if p.Completed {
		b = append(b, `,"completed":true`...)
	}
	b = append(b, "}\n"...)
	ew.b = b
	ew.line(b)
}

// appendJSONString appends s as a JSON string (user ids and error messages
// may hold anything but control characters).
func appendJSONString(b []byte, s string) []byte {
	q, err := json.Marshal(s)
	if err != nil {
		// Marshal of a string cannot fail; invalid UTF-8 becomes U+FFFD.
		return append(b, `""`...)
	}
	return append(b, q...)
}
