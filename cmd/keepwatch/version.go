package main

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
)

// version and revision are stamped at build time, as deploy/Dockerfile does:
//
//	go build -ldflags "-X main.version=1.4.0 -X main.revision=$(git rev-parse HEAD)" ./cmd/keepwatch
var (
	version  string
	revision string
)

// build says which build runs.
type build struct {
	version, revision, goVersion string
}

// readBuild returns the stamped version and revision; without a stamp, the
// revision Go recorded from the checkout (go build -buildvcs, the default in
// a git checkout) and the module version ("(devel)" for a local build).
func readBuild() build {
	b := build{version: version, revision: revision, goVersion: runtime.Version()}
	if info, ok := debug.ReadBuildInfo(); ok {
		if b.version == "" {
			b.version = info.Main.Version
		}
		modified := false
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				if b.revision == "" {
					b.revision = s.Value
				}
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		if modified && revision == "" && b.revision != "" {
			b.revision += "-modified"
		}
	}
	if b.version == "" {
		b.version = "unknown"
	}
	if b.revision == "" {
		b.revision = "unknown"
	}
	return b
}

// runVersion prints the build: keepwatch version X, revision Y, goZ.
func runVersion(_ context.Context, env *environment, args []string) error {
	fs := newFlagSet(env, "version", "Print the version, the source revision and the Go version of this build.")
	if err := parseFlags(env, fs, args); err != nil {
		return err
	}
	b := readBuild()
	_, err := fmt.Fprintf(env.stdout, "keepwatch version %s, revision %s, %s\n", b.version, b.revision, b.goVersion)
	return err
}
