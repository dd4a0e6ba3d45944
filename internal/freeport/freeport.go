// Package freeport finds TCP ports on 127.0.0.1 for the servers keepwatch
// starts as child processes (redis-server in the tests, in `keepwatch dev`
// and in the benchmarks) and for tests that listen themselves.
package freeport

import (
	"fmt"
	"net"
)

// Port returns a port on 127.0.0.1 that was free a moment ago. Another
// process may take it before the caller binds it: callers that start a
// child on it retry on another port when the child cannot bind.
func Port() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Addr is Port as a "127.0.0.1:port" address.
func Addr() (string, error) {
	p, err := Port()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("127.0.0.1:%d", p), nil
}
