//go:build !nodev

// The development stack: what `keepwatch dev` runs beside keepwatch itself, a
// Redis (a redis-server child process when one is on PATH, else an embedded
// Redis-protocol server) and the development auth secret, all under one data
// directory so that a restart finds everything again. It is left out of a
// build with -tags nodev (the production image), with FerretDB and SQLite.

package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/keepwatch/keepwatch/internal/redisserver"
)

// Redis is a running development Redis.
type devRedis struct {
	// URL is the redis:// URL to connect to.
	URL string
	// Embedded is true for the in-process Redis-protocol server (miniredis),
	// false for a redis-server child process.
	Embedded bool
	// PID is the redis-server child's process id (0 when embedded).
	PID int
	// Describe says what runs and where its data is, for the banner.
	Describe string

	stop func() error
}

// Stop stops the server: a redis-server child gets SIGTERM (it then writes
// its append-only file and exits); the embedded server saves its snapshot.
// It is safe to call more than once.
func (r *devRedis) Stop() error {
	if r.stop == nil {
		return nil
	}
	err := r.stop()
	r.stop = nil
	return err
}

// startDevRedis starts redis-server from PATH with its data (AOF, fsync every
// second) in dir, or, when there is none, an embedded Redis-protocol server
// whose data lives in memory and is saved to dir only when it stops cleanly.
func startDevRedis(ctx context.Context, dir string) (*devRedis, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("redis data directory: %w", err)
	}
	if _, err := exec.LookPath("redis-server"); err == nil {
		return startChild(ctx, dir)
	}
	return startEmbedded(dir)
}

// startChild runs redis-server with its append-only file in dir, stopped
// with keepwatch: SIGTERM on a clean stop (it then fsyncs the file), and the
// kernel's parent-death signal if keepwatch is killed.
func startChild(ctx context.Context, dir string) (*devRedis, error) {
	srv, err := redisserver.Start(ctx, redisserver.Options{Dir: dir, AppendFsync: "everysec", Core: -1, StopWithParent: true})
	if err != nil {
		return nil, err
	}
	return &devRedis{
		URL:      srv.URL(),
		PID:      srv.PID,
		Describe: fmt.Sprintf("redis-server (pid %d) on %s, append-only file in %s", srv.PID, srv.Addr, dir),
		stop:     func() error { return srv.Stop(10 * time.Second) },
	}, nil
}

// startEmbedded runs miniredis on a free local port, loaded from the snapshot
// the last clean stop saved.
func startEmbedded(dir string) (*devRedis, error) {
	m := miniredis.NewMiniRedis()
	snap := filepath.Join(dir, snapshotFile)
	if err := loadSnapshot(m, snap); err != nil {
		return nil, err
	}
	if err := m.StartAddr("127.0.0.1:0"); err != nil {
		return nil, fmt.Errorf("start embedded redis: %w", err)
	}
	r := &devRedis{
		URL:      "redis://" + m.Addr() + "/0",
		Embedded: true,
		Describe: fmt.Sprintf("embedded Redis-protocol server (miniredis) on %s, in memory; saved to %s on a clean stop", m.Addr(), snap),
	}
	r.stop = func() error {
		err := saveSnapshot(m, snap)
		m.Close()
		return err
	}
	return r, nil
}
