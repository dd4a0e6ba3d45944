package edge

import (
	"bytes"

	"github.com/valyala/fasthttp"

	"github.com/keepwatch/keepwatch"
)

var (
	errCLAndTE = keepwatch.Errorf(keepwatch.EMALFORMED,
		"the request has both Content-Length and Transfer-Encoding: its length is ambiguous (RFC 9112 6.3)")
	errTwoCL = keepwatch.Errorf(keepwatch.EMALFORMED,
		"the request has Content-Length headers of different values: its length is ambiguous (RFC 9112 6.3)")
	errTE = keepwatch.Errorf(keepwatch.EMALFORMED,
		"the request's Transfer-Encoding must be exactly one header: chunked")
)

// checkFraming answers 400 and closes the connection when a request's length
// is ambiguous: both Content-Length and Transfer-Encoding, or Content-Length
// headers that disagree. A proxy in front may read such a request's length
// otherwise than fasthttp, which reads the chunked body or the last
// Content-Length; the bytes one of them takes for the next request are a
// request smuggled past the other. Closing the connection discards them.
//
// fasthttp has parsed the headers and read the body by now; what it keeps of
// the framing headers is only its reading of them, so the check reads the
// raw header block. That costs a scan of the headers of every request with a
// body, about 1% of a progress post (BenchmarkPostProgress).
func (s *Shell) checkFraming(next fasthttp.RequestHandler) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		if err := framingError(&ctx.Request.Header); err != nil {
			ctx.SetConnectionClose()
			c := s.app.AcquireCtx(ctx)
			defer s.app.ReleaseCtx(c)
			_ = s.errorHandler(c, err)
			return
		}
		next(ctx)
	}
}

// framingError reads the raw headers of a request that has a body.
func framingError(h *fasthttp.RequestHeader) error {
	switch cl := h.ContentLength(); {
	case cl == -1: // chunked: any Transfer-Encoding but identity
		var te int
		for k, v := range headers(h.RawHeaders()) {
			switch {
			case isHeader(k, "content-length"):
				return errCLAndTE
			case isHeader(k, "transfer-encoding"):
				if te++; te > 1 || !equalFold(v, "chunked") {
					return errTE
				}
			}
		}
	case cl >= 0: // a Content-Length: the last one fasthttp read
		want := h.Peek(fasthttp.HeaderContentLength)
		for k, v := range headers(h.RawHeaders()) {
			switch {
			case isHeader(k, "content-length"):
				if !bytes.Equal(v, want) {
					return errTwoCL
				}
			case isHeader(k, "transfer-encoding"): // "identity", which fasthttp ignores
				return errCLAndTE
			}
		}
	}
	return nil
}

// headers yields the name and value of each line of a raw header block.
// Names and values are trimmed of the blanks fasthttp trims.
func headers(raw []byte) func(yield func(k, v []byte) bool) {
	return func(yield func(k, v []byte) bool) {
		for len(raw) > 0 {
			line := raw
			if i := bytes.IndexByte(raw, '\n'); i >= 0 {
				line, raw = raw[:i], raw[i+1:]
			} else {
				raw = nil
			}
			colon := bytes.IndexByte(line, ':')
			if colon <= 0 {
				continue
			}
			if !yield(line[:colon], bytes.Trim(line[colon+1:], " \t\r")) {
				return
			}
		}
	}
}

// isHeader compares a header name, case-insensitively, with a lower-case one.
// The length check first keeps the common case, another header, cheap.
func isHeader(k []byte, lower string) bool {
	return len(k) == len(lower) && equalFold(k, lower)
}

// equalFold compares b with lower, a string of lower-case letters and '-',
// ignoring case. Setting bit 0x20 lower-cases a letter and maps only '\r' to
// '-', and a header line holds no '\r'.
func equalFold(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i := range b {
		if b[i]|0x20 != lower[i] {
			return false
		}
	}
	return true
}
