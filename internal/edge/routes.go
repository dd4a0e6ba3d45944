package edge

import (
	"net/url"
	"strings"

	"github.com/gofiber/fiber/v2"
)

// route is a path the shell serves, kept to label requests that are answered
// before they reach its handler (a body over the limit, a wrong method).
type route struct {
	method string
	label  string   // /v1/progress/{video_id}
	parts  []string // "v1", "progress", "" for a parameter
}

func newRoute(method, path string) route {
	r := route{method: method}
	labels := strings.Split(strings.Trim(path, "/"), "/")
	for i, p := range labels {
		if strings.HasPrefix(p, ":") {
			labels[i] = "{" + strings.TrimSuffix(p[1:], "?") + "}"
			p = ""
		}
		r.parts = append(r.parts, p)
	}
	r.label = "/" + strings.Join(labels, "/")
	return r
}

func (r route) matches(path string) bool {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	if len(parts) != len(r.parts) {
		return false
	}
	for i, p := range r.parts {
		if p != "" && p != parts[i] || p == "" && parts[i] == "" {
			return false
		}
	}
	return true
}

// routeLabel is the label of the route serving path under any method, or
// "other".
func (s *Shell) routeLabel(path string) string {
	for _, r := range s.routes {
		if r.matches(path) {
			return r.label
		}
	}
	return otherRoute
}

// Param returns a path parameter percent-decoded, as browsers send it
// (encodeURIComponent turns "ep:1" into "ep%3A1"). The result may point into
// Fiber's reused request memory: copy what outlives the handler. A value that
// does not decode is returned as it came, for the caller's validation to
// refuse.
func Param(c *fiber.Ctx, name string) string {
	v := c.Params(name)
	if strings.IndexByte(v, '%') < 0 {
		return v
	}
	if d, err := url.PathUnescape(v); err == nil {
		return d
	}
	return v
}
