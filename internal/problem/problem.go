// Package problem writes errors as RFC 9457 problem details
// (application/problem+json). It is the one place that maps keepwatch error
// codes to HTTP statuses.
package problem

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/utils"

	"github.com/keepwatch/keepwatch"
)

// Status maps an error code to its HTTP status.
func Status(code keepwatch.Code) int {
	switch code {
	case keepwatch.EMALFORMED:
		return fiber.StatusBadRequest
	case keepwatch.EUNAUTHORIZED:
		return fiber.StatusUnauthorized
	case keepwatch.ENOTFOUND:
		return fiber.StatusNotFound
	case keepwatch.EMETHOD:
		return fiber.StatusMethodNotAllowed
	case keepwatch.ETOOLARGE:
		return fiber.StatusRequestEntityTooLarge
	case keepwatch.EUNSUPPORTED:
		return fiber.StatusUnsupportedMediaType
	case keepwatch.EINVALID:
		return fiber.StatusUnprocessableEntity
	case keepwatch.ERATELIMITED:
		return fiber.StatusTooManyRequests
	case keepwatch.EHEADERS:
		return fiber.StatusRequestHeaderFieldsTooLarge
	case keepwatch.EUNAVAILABLE:
		return fiber.StatusServiceUnavailable
	default:
		return fiber.StatusInternalServerError
	}
}

// Details is the problem+json body.
type Details struct {
	Type   string                 `json:"type"`
	Title  string                 `json:"title"`
	Status int                    `json:"status"`
	Detail string                 `json:"detail,omitempty"`
	Errors []keepwatch.FieldError `json:"errors,omitempty"`
}

// ContentType is the media type of problem details.
const ContentType = "application/problem+json"

// TypeURI is the problem type of a code; the README documents each.
func TypeURI(code keepwatch.Code) string { return "urn:keepwatch:problem:" + string(code) }

// From converts any error to problem details and the Retry-After seconds to
// send (0: none). Errors that are not *keepwatch.Error become a 500 whose
// detail reveals nothing internal.
func From(err error) (Details, int) {
	ke := AsError(err)
	st := Status(ke.Code)
	msg := ke.Message
	if ke.Code == keepwatch.EINTERNAL {
		msg = "internal error"
	}
	d := Details{Type: TypeURI(ke.Code), Title: utils.StatusMessage(st), Status: st, Detail: msg, Errors: ke.Fields}
	ra := ke.RetryAfter
	if ra <= 0 && (ke.Code == keepwatch.EUNAVAILABLE || ke.Code == keepwatch.ERATELIMITED) {
		ra = 1
	}
	return d, ra
}

// AsError returns the *keepwatch.Error in err's chain; Fiber's own errors (an
// unknown route, a body over the limit) become the one of their status, and
// any other error one with code EINTERNAL.
func AsError(err error) *keepwatch.Error {
	var ke *keepwatch.Error
	if errors.As(err, &ke) {
		return ke
	}
	var fe *fiber.Error
	if errors.As(err, &fe) {
		return fromFiber(fe)
	}
	return &keepwatch.Error{Code: keepwatch.EINTERNAL, Err: err}
}

func fromFiber(fe *fiber.Error) *keepwatch.Error {
	switch fe.Code {
	case fiber.StatusRequestEntityTooLarge:
		return &keepwatch.Error{Code: keepwatch.ETOOLARGE, Message: "the request body is larger than the limit"}
	case fiber.StatusNotFound:
		return &keepwatch.Error{Code: keepwatch.ENOTFOUND, Message: "no such resource"}
	case fiber.StatusMethodNotAllowed:
		// Fiber has set Allow to the methods the path is served with.
		return &keepwatch.Error{Code: keepwatch.EMETHOD, Message: "the path is not served with this method; Allow lists those it is"}
	case fiber.StatusRequestHeaderFieldsTooLarge:
		return &keepwatch.Error{Code: keepwatch.EHEADERS, Message: "the request line and headers are larger than the limit"}
	case fiber.StatusServiceUnavailable:
		return &keepwatch.Error{Code: keepwatch.EUNAVAILABLE, Message: "service unavailable"}
	case fiber.StatusUnsupportedMediaType:
		return &keepwatch.Error{Code: keepwatch.EUNSUPPORTED, Message: fe.Message}
	default:
		if fe.Code >= 400 && fe.Code < 500 {
			return &keepwatch.Error{Code: keepwatch.EMALFORMED, Message: fe.Message}
		}
		return &keepwatch.Error{Code: keepwatch.EINTERNAL}
	}
}

// Write writes err as problem details on c and returns nil, so handlers can
// `return problem.Write(c, err)`.
func Write(c *fiber.Ctx, err error) error {
	d, ra := From(err)
	body, mErr := json.Marshal(d)
	if mErr != nil {
		d.Status = fiber.StatusInternalServerError
		body = []byte(`{"type":"urn:keepwatch:problem:internal","title":"Internal Server Error","status":500}`)
	}
	if ra > 0 {
		c.Set(fiber.HeaderRetryAfter, strconv.Itoa(ra))
	}
	if d.Status == fiber.StatusUnauthorized {
		c.Set(fiber.HeaderWWWAuthenticate, challenge(c))
	}
	c.Status(d.Status)
	c.Set(fiber.HeaderContentType, ContentType)
	return c.Send(body)
}

// challenge is the WWW-Authenticate of a 401 (RFC 6750 3): the error code
// only when the request carried a bearer token, since a request without one
// is told only which scheme to use.
func challenge(c *fiber.Ctx) string {
	h := c.Request().Header.Peek(fiber.HeaderAuthorization)
	if len(h) > len("bearer ") && bytes.EqualFold(h[:len("bearer ")], []byte("bearer ")) {
		return `Bearer error="invalid_token"`
	}
	return "Bearer"
}

// ErrorHandler is a fiber.Config.ErrorHandler that answers every error, those
// of Fiber itself included (unknown route, body over the limit), as problem
// details.
func ErrorHandler(c *fiber.Ctx, err error) error { return Write(c, err) }
