package edge

import (
	"fmt"
	"net/url"
)

// CORS lets browsers on other origins call a service. The service sets what
// its routes need; the operator sets Origins (--cors-origins).
type CORS struct {
	// Origins lists scheme://host[:port] origins; empty turns CORS off.
	Origins []string
	// Methods, Headers and Expose are comma-separated: the methods and
	// request headers a browser may use, and the answer headers its script
	// may read.
	Methods, Headers, Expose string
}

// validate accepts what a browser sends as Origin: scheme://host[:port].
func (c CORS) validate() error {
	for _, o := range c.Origins {
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
			return fmt.Errorf("--cors-origins: %q is not scheme://host[:port]", o)
		}
	}
	return nil
}
