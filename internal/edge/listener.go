package edge

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// retryListener waits out the Accept errors a busy process recovers from, as
// net/http's Server.Serve does: out of file descriptors (EMFILE for the
// process, ENFILE for the system) and a connection reset before it was
// accepted (ECONNABORTED). fasthttp treats every Accept error but a timeout as
// the end of the server, so without this a flood of idle connections at the
// open-file limit stopped the process; now the connection waits in the
// kernel's accept queue until a descriptor is free.
type retryListener struct {
	net.Listener
	retries prometheus.Counter
	log     *slog.Logger
	done    chan struct{}
	once    sync.Once
	lastLog time.Time // Accept runs on one goroutine (fasthttp's Serve)
}

// Pauses between retries: 5 ms doubling to 1 s, net/http's.
const (
	firstRetry = 5 * time.Millisecond
	maxRetry   = time.Second
)

func (s *Shell) retrying(ln net.Listener) net.Listener {
	if _, ok := ln.(*retryListener); ok {
		return ln
	}
	return &retryListener{Listener: ln, retries: s.m.retries, log: s.deps.Logger, done: make(chan struct{})}
}

// Accept returns the next connection, or the listener's error once it is
// closed or fails for good.
func (l *retryListener) Accept() (net.Conn, error) {
	var pause time.Duration
	for {
		c, err := l.Listener.Accept()
		if err == nil || !retryable(err) {
			return c, err
		}
		pause = min(max(2*pause, firstRetry), maxRetry)
		l.retries.Inc()
		if time.Since(l.lastLog) > time.Minute {
			// A warning at most a minute: the counter has the count.
			l.log.Warn("accept: retrying", "err", err, "pause", pause)
			l.lastLog = time.Now()
		}
		t := time.NewTimer(pause)
		select {
		case <-l.done:
			t.Stop()
			return nil, net.ErrClosed
		case <-t.C:
		}
	}
}

// Close closes the listener and ends a pause in Accept.
func (l *retryListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}

func retryable(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) || errors.Is(err, syscall.ECONNABORTED)
}
