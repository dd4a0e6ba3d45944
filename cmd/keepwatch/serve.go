package main

import (
	"context"
	"log/slog"
	"net"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/oklog/run"
)

// httpService is what the command and query services share for serving.
type httpService interface {
	App() *fiber.App
	Drain()
	Shutdown(ctx context.Context) error
}

// addHTTP serves svc on ln as an actor of g. On interrupt, readiness turns 503
// first, the drain delay lets load balancers notice, in-flight requests get
// grace to finish, and then cleanup releases what the service used.
func addHTTP(g *run.Group, svc httpService, ln net.Listener, drainDelay, grace time.Duration, log *slog.Logger, cleanup func()) {
	g.Add(func() error {
		return svc.App().Listener(ln)
	}, func(error) {
		svc.Drain()
		time.Sleep(drainDelay)
		sctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		if err := svc.Shutdown(sctx); err != nil {
			log.Error("shutdown", "err", err)
		}
		cleanup()
	})
}

// addSignal ends g when ctx ends (the first SIGTERM or SIGINT).
func addSignal(g *run.Group, ctx context.Context, log *slog.Logger) {
	sigCtx, cancel := context.WithCancel(ctx)
	g.Add(func() error {
		<-sigCtx.Done()
		if ctx.Err() != nil {
			log.Info("stopping", "reason", context.Cause(ctx))
		}
		return nil
	}, func(error) { cancel() })
}
