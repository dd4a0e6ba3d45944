package main

import (
	"context"
	"errors"
	"io"
)

func runFleet(ctx context.Context, args []string, w io.Writer) error {
	return errors.New("not built yet")
}
