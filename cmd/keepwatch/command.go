package main

import (
	"context"
	"errors"
)

// runCommand is being built; see the issue tracker.
func runCommand(ctx context.Context, env *environment, args []string) error {
	return errors.New("command: not built yet")
}
