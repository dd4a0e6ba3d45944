//go:build !nodev

// The development stack: what `keepwatch dev` runs beside keepwatch itself, a
// Redis (a redis-server child process when one is on PATH, else an embedded
// Redis-protocol server) and the development auth secret, all under one data
// directory so that a restart finds everything again. It is left out of a
// build with -tags nodev (the production image), with FerretDB and SQLite.

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
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
func startDevRedis(ctx context.Context, dir string, log *slog.Logger) (*devRedis, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("redis data directory: %w", err)
	}
	if path, err := exec.LookPath("redis-server"); err == nil {
		return startChild(ctx, path, dir, log)
	}
	return startEmbedded(dir)
}

// startChild runs redis-server on a free local port. The port is found by
// binding :0 and releasing it, so another process may take it in between:
// then redis-server exits at once and the next port is tried.
func startChild(ctx context.Context, path, dir string, log *slog.Logger) (*devRedis, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("redis data directory: %w", err)
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		cmd := exec.Command(path,
			"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--protected-mode", "no",
			"--dir", abs, "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
			"--logfile", filepath.Join(abs, "redis.log"), "--daemonize", "no")
		setParentDeathSignal(cmd)
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("start %s: %w", path, err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		if err := waitPing(ctx, addr, exited); err != nil {
			_ = cmd.Process.Kill()
			<-exited
			lastErr = fmt.Errorf("redis-server on %s (log: %s): %w", addr, filepath.Join(abs, "redis.log"), err)
			log.Debug("redis-server did not start, trying another port", "err", lastErr)
			continue
		}
		r := &devRedis{
			URL:      "redis://" + addr + "/0",
			PID:      cmd.Process.Pid,
			Describe: fmt.Sprintf("redis-server (pid %d) on %s, append-only file in %s", cmd.Process.Pid, addr, abs),
		}
		r.stop = func() error {
			// SIGTERM: redis-server fsyncs its append-only file and exits.
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
				return nil
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
				return errors.New("redis-server did not stop within 10s after SIGTERM: killed")
			}
		}
		return r, nil
	}
	return nil, lastErr
}

// waitPing polls PING until the server answers, it exits, or ctx ends.
func waitPing(ctx context.Context, addr string, exited <-chan error) error {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		pctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		err := c.Ping(pctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		select {
		case werr := <-exited:
			return fmt.Errorf("exited: %v", werr)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer to PING within 10s: %w", err)
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
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
