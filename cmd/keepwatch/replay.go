package main

import (
	"context"
	"errors"
)

// runReplay is being built; see the issue tracker.
func runReplay(ctx context.Context, env *environment, args []string) error {
	return errors.New("replay: not built yet")
}
