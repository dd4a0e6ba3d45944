package main

import (
	"context"
	"errors"
	"flag"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepwatch/keepwatch/storage/mongo"
	"github.com/keepwatch/keepwatch/storage/redisbuf"
)

// PLACEHOLDER until the flush engineer replaces this file (issue 3):
// flushConfig, startFlusher and runFlush are theirs. The lead's command.go
// calls flushConfig.register(fs) and startFlusher(...).Run(ctx).

type flushConfig struct{}

func (c *flushConfig) register(fs *flag.FlagSet) {}

func startFlusher(ctx context.Context, env *environment, cfg *flushConfig, buf *redisbuf.Buffer, store *mongo.Store, reg prometheus.Registerer) (interface{ Run(context.Context) error }, error) {
	return nil, errors.New("flusher: not built yet; run with --flush=false")
}

// runFlush is being built; see the issue tracker.
func runFlush(ctx context.Context, env *environment, args []string) error {
	return errors.New("flush: not built yet")
}
