//go:build nodev

package main

import "context"

// runDev explains that this build has no development stack: production
// images are built with -tags nodev so that FerretDB, SQLite and the embedded
// Redis are not linked into what runs in production.
func runDev(context.Context, *environment, []string) error {
	return usageError{"this keepwatch was built with -tags nodev, without the development stack (embedded FerretDB and Redis); run `go run ./cmd/keepwatch dev` from a checkout instead"}
}
