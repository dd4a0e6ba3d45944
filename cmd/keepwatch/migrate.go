package main

import (
	"context"
	"errors"
)

// runMigrate is being built; see the issue tracker.
func runMigrate(ctx context.Context, env *environment, args []string) error {
	return errors.New("migrate: not built yet")
}
