package main

import (
	"context"
	"errors"
)

// runQuery is being built; see the issue tracker.
func runQuery(ctx context.Context, env *environment, args []string) error {
	return errors.New("query: not built yet")
}
