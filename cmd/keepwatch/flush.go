package main

import (
	"context"
	"errors"
)

// runFlush is being built; see the issue tracker.
func runFlush(ctx context.Context, env *environment, args []string) error {
	return errors.New("flush: not built yet")
}
