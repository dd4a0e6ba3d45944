package keepwatch

import (
	"errors"
	"fmt"
)

// Code classifies an error. Each code maps to exactly one HTTP status, in
// internal/problem; every layer returns an *Error with one of these codes for
// conditions a client can act on.
type Code string

// The error codes shared by every layer.
const (
	EMALFORMED    Code = "malformed"              // 400: the body is not JSON of the expected shape
	EUNAUTHORIZED Code = "unauthorized"           // 401: missing, bad or expired token
	ENOTFOUND     Code = "not_found"              // 404
	EMETHOD       Code = "method_not_allowed"     // 405: the path is served, not with this method
	ETOOLARGE     Code = "too_large"              // 413: body over the limit
	EUNSUPPORTED  Code = "unsupported_media_type" // 415: not application/json
	EINVALID      Code = "invalid"                // 422: a field breaks a rule
	ERATELIMITED  Code = "rate_limited"           // 429: the user posts too often
	EHEADERS      Code = "headers_too_large"      // 431: request line and headers over the limit
	EUNAVAILABLE  Code = "unavailable"            // 503: buffer over its high-water mark or a dependency is down
	EINTERNAL     Code = "internal"               // 500: a bug; details are logged, never shown
)

// FieldError names one invalid field and why.
type FieldError struct {
	Field  string `json:"field"`
	Detail string `json:"detail"`
}

// Error is the one error type of keepwatch. Message is safe to show to a
// client; Err, when set, is the internal cause and is never shown.
type Error struct {
	Code    Code
	Message string
	Fields  []FieldError
	// RetryAfter, in seconds, is sent with EUNAVAILABLE and ERATELIMITED.
	RetryAfter int
	Err        error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Err)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an *Error with a client-safe message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of the first *Error in err's chain, EINTERNAL for
// any other non-nil error and "" for nil.
func ErrorCode(err error) Code {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return EINTERNAL
}

// ErrUnavailable is returned by adapters when their server cannot be reached or
// does not answer in time: the caller may retry later.
var ErrUnavailable = errors.New("dependency unavailable")

// ErrBufferFull is returned by the buffer when it holds its high-water mark of
// pending entries and a write would add a new one.
var ErrBufferFull = errors.New("buffer over its high-water mark")
