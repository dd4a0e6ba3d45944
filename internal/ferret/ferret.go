// Package ferret runs an embedded FerretDB (a MongoDB-protocol server) with its
// SQLite backend in a local directory. keepwatch uses it where a MongoDB
// replica set would be too much setup: `keepwatch dev` and the tests.
//
// FerretDB 1.24 is a stand-in with known limits (see the README): it is used
// for functional truth, never for speed figures about MongoDB.
package ferret

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
)

// Config configures an embedded server.
type Config struct {
	// Dir holds the SQLite files (one per database). It is created if missing.
	Dir string
	// ListenAddr is the TCP address to listen on; empty means a free port on
	// 127.0.0.1.
	ListenAddr string
	// Logger receives FerretDB's own logs; nil discards them.
	Logger *slog.Logger
}

// Server is a running embedded FerretDB.
type Server struct {
	uri    string
	addr   string
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

// Start starts FerretDB and returns once it accepts connections (the
// listener is bound before Start returns, so a busy port is an error here).
// ctx bounds the start only: the server runs until Stop.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Dir == "" {
		return nil, errors.New("start ferretdb: no data directory")
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("start ferretdb: data directory: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("start ferretdb: %w", err)
	}
	addr := cfg.ListenAddr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	// A "file:" URI naming a directory that ends with "/". Never mode=memory:
	// FerretDB then keeps one connection per database and loses everything on
	// stop, which hides the bugs a restart test is there to find.
	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: addr},
		Logger:    logger,
		Handler:   "sqlite",
		SQLiteURL: "file:" + dir + "/",
	})
	if err != nil {
		return nil, fmt.Errorf("start ferretdb on %s: %w", addr, err)
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s := &Server{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		_ = f.Run(runCtx)
	}()
	// MongoDBURI waits for the TCP listener, which New already bound.
	s.uri = f.MongoDBURI()
	s.addr = strings.TrimSuffix(strings.TrimPrefix(s.uri, "mongodb://"), "/")
	if err := waitAccept(ctx, s.addr); err != nil {
		s.Stop()
		return nil, fmt.Errorf("start ferretdb: %w", err)
	}
	return s, nil
}

// waitAccept dials the listener until it accepts a connection.
func waitAccept(ctx context.Context, host string) error {
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "tcp", host)
		if err == nil {
			_ = c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w", host, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// URI is the mongodb:// URI of the server, e.g. "mongodb://127.0.0.1:41234/".
func (s *Server) URI() string { return s.uri }

// Addr is the host:port the server listens on.
func (s *Server) Addr() string { return s.addr }

// Stop closes the listener and every client connection, then the SQLite
// backend, and waits for all of it. FerretDB gives connected clients up to
// 3 s to disconnect first, so Stop takes that long while clients are
// connected. It is safe to call more than once.
func (s *Server) Stop() {
	s.once.Do(func() {
		s.cancel()
		<-s.done
	})
}
