package main

import (
	"context"
	"errors"
)

// runDev is being built; see the issue tracker.
func runDev(ctx context.Context, env *environment, args []string) error {
	return errors.New("dev: not built yet")
}
