package edge

import (
	"crypto/subtle"
	"net/http/pprof"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/adaptor"
	"github.com/valyala/fasthttp"

	"github.com/keepwatch/keepwatch"
)

var (
	errNoToken = keepwatch.Errorf(keepwatch.EUNAUTHORIZED, "an Authorization: Bearer token is required")
	errTwoAuth = keepwatch.Errorf(keepwatch.EMALFORMED, "the request has more than one Authorization header")
	errAdmin   = keepwatch.Errorf(keepwatch.EUNAUTHORIZED, "the admin token is required")
)

// bearer returns the token of the request's one "Authorization: Bearer
// <token>" header (the scheme is case-insensitive, RFC 9110 11.1), nil when
// there is none. Two Authorization headers are an error: a proxy and
// keepwatch could each read another one.
func bearer(h *fasthttp.RequestHeader) ([]byte, error) {
	// PeekAll reuses the header's own buffer: no allocation.
	all := h.PeekAll(fiber.HeaderAuthorization)
	switch len(all) {
	case 0:
		return nil, nil
	case 1:
	default:
		return nil, errTwoAuth
	}
	v := all[0]
	const scheme = "bearer"
	if len(v) <= len(scheme) || v[len(scheme)] != ' ' {
		return nil, nil
	}
	for i := range len(scheme) {
		if v[i]|0x20 != scheme[i] {
			return nil, nil
		}
	}
	v = v[len(scheme):]
	for len(v) > 0 && v[0] == ' ' {
		v = v[1:]
	}
	if len(v) == 0 {
		return nil, nil
	}
	return v, nil
}

// User authenticates the request and returns its user, and the user's rate
// bucket for Allow (nil without a rate limit). The user comes from the token
// only, never from the request.
func (s *Shell) User(c *fiber.Ctx, recv time.Time) (string, *Bucket, error) {
	tok, err := bearer(&c.Request().Header)
	if err != nil {
		return "", nil, err
	}
	if tok == nil || s.deps.Verifier == nil {
		return "", nil, errNoToken
	}
	user, data, err := s.deps.Verifier.VerifyData(tok, recv)
	if err != nil {
		return "", nil, err
	}
	b, _ := data.(*Bucket)
	if b == nil && s.limiter != nil { // a verifier that keeps nothing
		b = s.limiter.bucketFor(user, recv)
	}
	return user, b, nil
}

// Allow takes one request from the user's bucket; false means 429.
func (s *Shell) Allow(b *Bucket, recv time.Time) bool {
	return s.limiter.allow(b, recv)
}

// mountPprof serves the Go profiler behind the admin token, so operators can
// profile a live instance without exposing it to players. cmdline is not
// served: it would show the process's arguments, secrets passed as flags
// among them.
func (s *Shell) mountPprof() {
	admin := func(h fiber.Handler) Handler {
		return func(c *fiber.Ctx, _ time.Time) error {
			tok, err := bearer(&c.Request().Header)
			if err != nil {
				return err
			}
			// Constant time: a compare that stops at the first wrong byte
			// lets a caller find the token byte by byte from response
			// times.
			if subtle.ConstantTimeCompare(tok, []byte(s.cfg.AdminToken)) != 1 {
				return errAdmin
			}
			return h(c)
		}
	}
	s.Handle(fiber.MethodGet, "/debug/pprof/", fiber.StatusOK, admin(adaptor.HTTPHandlerFunc(pprof.Index)))
	s.Handle(fiber.MethodGet, "/debug/pprof/:name", fiber.StatusOK, admin(func(c *fiber.Ctx) error {
		switch name := c.Params("name"); name {
		case "cmdline":
			return keepwatch.Errorf(keepwatch.ENOTFOUND, "not served: the command line may hold secrets")
		case "profile":
			return adaptor.HTTPHandlerFunc(pprof.Profile)(c)
		case "symbol":
			return adaptor.HTTPHandlerFunc(pprof.Symbol)(c)
		case "trace":
			return adaptor.HTTPHandlerFunc(pprof.Trace)(c)
		default:
			return adaptor.HTTPHandler(pprof.Handler(name))(c)
		}
	}))
}
