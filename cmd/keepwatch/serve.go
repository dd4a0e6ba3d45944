package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/keepwatch/keepwatch/api"
	"github.com/keepwatch/keepwatch/internal/auth"
	"github.com/keepwatch/keepwatch/internal/edge"
)

// httpConfig holds the flags of the HTTP edge every service has: where it
// listens and how it bounds connections and requests.
type httpConfig struct {
	addr string
	edge edge.Config
}

// register adds the flags with a service's defaults.
func (c *httpConfig) register(fs *flag.FlagSet, addr string, d edge.Config) {
	c.edge = d
	fs.StringVar(&c.addr, "http-addr", addr, "address to listen on")
	fs.DurationVar(&c.edge.ReadTimeout, "read-timeout", d.ReadTimeout, "longest a client may take to send one request; slower ones are disconnected")
	fs.DurationVar(&c.edge.IdleTimeout, "idle-timeout", d.IdleTimeout, "how long a keep-alive connection may wait for its next request; keep it above a load balancer's idle timeout")
	fs.DurationVar(&c.edge.WriteTimeout, "write-timeout", d.WriteTimeout, "longest the writing of one answer may take (0: no limit)")
	fs.IntVar(&c.edge.MaxConns, "max-conns", d.MaxConns,
		"most open client connections, each a goroutine with its buffers and a file descriptor; past it new connections get 503 (lowered, with a warning, to what the open-file limit leaves)")
	fs.IntVar(&c.edge.MaxConnsPerIP, "max-conns-per-ip", d.MaxConnsPerIP,
		"most open connections from one client IPv4 address, past it 429 (0: no bound; leave it 0 behind a load balancer or NAT, whose address every client shares)")
	fs.IntVar(&c.edge.MaxHeaderBytes, "max-header-bytes", d.MaxHeaderBytes, "largest request line plus headers in bytes (431 above); every open connection holds a buffer of this size")
	fs.DurationVar(&c.edge.DrainDelay, "drain-delay", d.DrainDelay, "time between readiness turning 503 and closing the listener on SIGTERM")
	fs.DurationVar(&c.edge.Grace, "shutdown-grace", d.Grace, "time in-flight requests get to finish on SIGTERM")
}

// apiConfig holds the flags of an API that players or frontends call with
// bearer tokens: secrets, the token cache, the per-user rate limit and CORS.
type apiConfig struct {
	authSecret     secret
	adminToken     secret
	tokenCacheSize int
	tokens         tokenFlags
	corsOrigins    string
}

func (c *apiConfig) register(fs *flag.FlagSet) {
	c.authSecret.register(fs, "auth-secret", "HS256 secrets, comma-separated (rotation: all verify); required")
	c.adminToken.register(fs, "admin-token", "bearer token for /debug/pprof (empty: pprof off)")
	fs.IntVar(&c.tokenCacheSize, "token-cache-size", 100_000, "verified tokens kept in memory (0: verify every request)")
	c.tokens.register(fs)
	fs.StringVar(&c.corsOrigins, "cors-origins", "",
		"browser origins allowed to call the API, comma-separated (https://app.example.com); empty: CORS off")
}

// shell returns an API's edge configuration, validated (the HTTP flags, the
// secrets, CORS, the OpenAPI document and the open-file budget), and its
// token verifier.
func (c *apiConfig) shell(h *httpConfig, files edge.FileBudget) (edge.Config, *auth.Verifier, error) {
	e := h.edge
	secrets, err := c.authSecret.get()
	if err != nil {
		return e, nil, err
	}
	v, err := c.tokens.verifier(secrets, c.tokenCacheSize)
	if err != nil {
		return e, nil, usageError{err.Error()}
	}
	if e.AdminToken, err = c.adminToken.get(); err != nil {
		return e, nil, err
	}
	e.CORS.Origins = nil
	for o := range strings.SplitSeq(c.corsOrigins, ",") {
		if o = strings.TrimSpace(o); o != "" {
			e.CORS.Origins = append(e.CORS.Origins, o)
		}
	}
	e.OpenAPI, e.Files = api.OpenAPI, files
	if err := e.Validate(); err != nil {
		return e, nil, usageError{err.Error()}
	}
	return e, v, nil
}

// secret is a flag that holds a secret, with a twin --NAME-file that reads it
// from a file: a flag's value shows in ps and /proc/PID/cmdline, a mounted
// file does not.
type secret struct {
	name, value, file string
}

func (s *secret) register(fs *flag.FlagSet, name, usage string) {
	s.name = name
	fs.StringVar(&s.value, name, "", usage+"; prefer --"+name+"-file")
	fs.StringVar(&s.file, name+"-file", "", "file holding --"+name+" (a Kubernetes or Docker secret); one trailing newline is ignored")
}

// get returns the secret from the flag or the file.
func (s *secret) get() (string, error) {
	if s.file == "" {
		return s.value, nil
	}
	if s.value != "" {
		return "", usageError{fmt.Sprintf("--%s and --%s-file are both set: keep one", s.name, s.name)}
	}
	b, err := os.ReadFile(s.file)
	if err != nil {
		return "", fmt.Errorf("--%s-file: %w", s.name, err)
	}
	v := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if v == "" {
		return "", usageError{fmt.Sprintf("--%s-file %s is empty", s.name, s.file)}
	}
	return v, nil
}

// baseFiles are the descriptors a keepwatch process uses besides its
// connections: standard streams, listeners, the poller, the embedded
// MongoDB's SQLite files in keepwatch dev, a profile being written.
const baseFiles = 64

// fileBudget is what the open-file limit leaves each of servers edges once
// reserved descriptors are set aside.
func fileBudget(reserved, servers int) edge.FileBudget {
	return edge.FileBudget{Limit: edge.FileLimit(), Reserved: baseFiles + reserved, Servers: servers}
}

// undo runs, last first, what a start-up that failed half-way has set up, so
// that no connection, goroutine or listener outlives the error.
type undo []func()

func (u *undo) add(f func()) { *u = append(*u, f) }

func (u undo) run() {
	for i := len(u) - 1; i >= 0; i-- {
		u[i]()
	}
}

// onError runs u if *err is set: defer u.onError(&err) with a named error.
func (u *undo) onError(err *error) {
	if *err != nil {
		u.run()
	}
}
