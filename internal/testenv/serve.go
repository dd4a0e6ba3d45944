package testenv

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"
)

// Server is what ServeLocal serves: an edge.Shell.
type Server interface {
	Serve(ln net.Listener) error
	Shutdown(ctx context.Context) error
}

// ServeLocal serves s on a free local port until the test ends and returns
// its host:port, for requests that must cross a real connection.
func ServeLocal(t testing.TB, s Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
		<-done
	})
	return ln.Addr().String()
}

// Exchange writes raw bytes on a new connection to addr and reads until the
// server closes it or timeout passes; closed tells which. It is how tests
// send what no HTTP client would (smuggling attempts, slow or idle clients).
func Exchange(t testing.TB, addr, raw string, timeout time.Duration) (got string, closed bool) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	b, err := io.ReadAll(c)
	return string(b), err == nil
}

// App adapts a Fiber app to ServeLocal.
type App struct{ *fiber.App }

// Serve serves the app on ln.
func (a App) Serve(ln net.Listener) error { return a.Listener(ln) }

// Shutdown stops the app, waiting for requests in flight until ctx ends.
func (a App) Shutdown(ctx context.Context) error { return a.ShutdownWithContext(ctx) }
