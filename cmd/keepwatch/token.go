package main

import (
	"context"
	"errors"
)

// runToken is being built; see the issue tracker.
func runToken(ctx context.Context, env *environment, args []string) error {
	return errors.New("token: not built yet")
}
