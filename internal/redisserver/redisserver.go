// Package redisserver runs redis-server as a child process on a free local
// port and waits until it answers: the one launcher behind the tests'
// servers (internal/testenv), `keepwatch dev`'s Redis and the benchmarks'.
package redisserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/keepwatch/keepwatch/internal/freeport"
)

// Options say how to run the server.
type Options struct {
	// Dir is the server's working directory: its append-only file and, when
	// LogFile is empty, its log (redis.log). Required.
	Dir string
	// AppendFsync is the persistence: "" or "no" for none (a test or
	// benchmark server keeps nothing), "everysec" or "always" for an
	// append-only file in Dir fsynced every second or on every write.
	AppendFsync string
	// Port is the port to listen on; 0 picks a free one (and retries on
	// another if the pick was taken meanwhile).
	Port int
	// Core pins the server to one CPU core with taskset (benchmarks); -1
	// leaves it free. The zero value pins to core 0, so set it.
	Core int
	// StopWithParent asks the kernel to send SIGTERM to the server when
	// the process that started it dies without stopping it (Linux), and
	// puts it in a process group of its own so a terminal's Ctrl-C reaches
	// the parent, which stops it in order.
	StopWithParent bool
	// Args are more "--name value" arguments for redis-server.
	Args []string
	// LogFile receives the server's log; Dir/redis.log when empty.
	LogFile string
	// StartTimeout bounds the wait for the first PONG; 10s when 0.
	StartTimeout time.Duration
	// Env is added to the server's environment (LC_ALL, for one).
	Env []string
	// ReturnWhileLoading makes Start return as soon as the server answers,
	// -LOADING included: for tests of clients facing a server that is still
	// reading its append-only file back.
	ReturnWhileLoading bool
}

// Server is a running redis-server child.
type Server struct {
	// Addr is "127.0.0.1:port".
	Addr string
	// Port is the port it listens on.
	Port int
	// PID is the redis-server process id (it replaces taskset in place).
	PID int

	opts   Options
	cmd    *exec.Cmd
	exited chan error
}

// URL is the redis:// URL of database 0.
func (s *Server) URL() string { return "redis://" + s.Addr + "/0" }

// Start starts redis-server from PATH and returns once it answers PING.
func Start(ctx context.Context, o Options) (*Server, error) {
	if o.Dir == "" {
		return nil, errors.New("start redis-server: Options.Dir is required")
	}
	path, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server is not on PATH (Debian: apt-get install redis-server): %w", err)
	}
	abs, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("redis data directory: %w", err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("redis data directory: %w", err)
	}
	o.Dir = abs
	if o.LogFile == "" {
		o.LogFile = filepath.Join(abs, "redis.log")
	}
	if o.StartTimeout <= 0 {
		o.StartTimeout = 10 * time.Second
	}
	attempts := 1
	if o.Port == 0 {
		// A port found free can be taken before redis-server binds it; the
		// server then exits at once and another port is tried.
		attempts = 3
	}
	var lastErr error
	for range attempts {
		port := o.Port
		if port == 0 {
			if port, err = freeport.Port(); err != nil {
				return nil, err
			}
		}
		s, err := start(ctx, path, o, port)
		if err == nil {
			return s, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	return nil, lastErr
}

func start(ctx context.Context, path string, o Options, port int) (*Server, error) {
	args := []string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--protected-mode", "no",
		"--dir", o.Dir, "--save", "", "--logfile", o.LogFile, "--daemonize", "no"}
	switch o.AppendFsync {
	case "", "no":
		args = append(args, "--appendonly", "no")
	case "everysec", "always":
		args = append(args, "--appendonly", "yes", "--appendfsync", o.AppendFsync)
	default:
		return nil, fmt.Errorf("start redis-server: AppendFsync %q: want no, everysec or always", o.AppendFsync)
	}
	args = append(args, o.Args...)
	if o.Core >= 0 {
		ts, err := exec.LookPath("taskset")
		if err != nil {
			return nil, fmt.Errorf("pin redis-server to core %d: taskset is not on PATH (Debian: util-linux): %w", o.Core, err)
		}
		args = append([]string{"-c", strconv.Itoa(o.Core), path}, args...)
		path = ts
	}
	cmd := exec.Command(path, args...)
	if len(o.Env) > 0 {
		cmd.Env = append(os.Environ(), o.Env...)
	}
	if o.StopWithParent {
		setStopWithParent(cmd)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start redis-server: %w", err)
	}
	s := &Server{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Port: port, PID: cmd.Process.Pid,
		opts: o, cmd: cmd, exited: make(chan error, 1)}
	go func() { s.exited <- cmd.Wait() }()
	if err := s.waitPong(ctx); err != nil {
		_ = cmd.Process.Kill()
		<-s.exited
		return nil, fmt.Errorf("redis-server on %s (log %s): %w", s.Addr, o.LogFile, err)
	}
	return s, nil
}

// waitPong polls PING until the server answers, exits, or time runs out.
func (s *Server) waitPong(ctx context.Context) error {
	deadline := time.Now().Add(s.opts.StartTimeout)
	for {
		err := ping(s.Addr)
		if err == nil || s.opts.ReturnWhileLoading && errors.Is(err, errLoading) {
			return nil
		}
		select {
		case werr := <-s.exited:
			s.exited <- werr // for Stop
			return fmt.Errorf("exited at start: %v", werr)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer to PING within %s: %w", s.opts.StartTimeout, err)
		}
	}
}

// errLoading is the answer of a server still reading its append-only file.
var errLoading = errors.New("-LOADING: the server is loading its data")

// ping sends an inline PING and expects +PONG: a server still reading its
// append-only file answers -LOADING and is not ready yet.
func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if bytes.HasPrefix(buf[:n], []byte("-LOADING")) {
		return errLoading
	}
	if !bytes.HasPrefix(buf[:n], []byte("+PONG")) {
		return fmt.Errorf("answer %q", buf[:n])
	}
	return nil
}

// Stop sends SIGTERM (redis-server then writes its append-only file and
// exits) and waits up to grace, then kills. It is safe to call twice.
func (s *Server) Stop(grace time.Duration) error {
	if s.cmd == nil {
		return nil
	}
	defer func() { s.cmd = nil }()
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
		return nil
	case <-time.After(grace):
		_ = s.cmd.Process.Kill()
		<-s.exited
		return fmt.Errorf("redis-server did not stop within %s after SIGTERM: killed", grace)
	}
}

// Kill kills the server at once, as a crash would: what it had not written
// to its append-only file is lost. It is safe to call twice.
func (s *Server) Kill() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
	s.cmd = nil
}

// Restart starts the server again on its port with its options and data,
// after Stop or Kill.
func (s *Server) Restart(ctx context.Context) error {
	if s.cmd != nil {
		return errors.New("restart redis-server: it is running")
	}
	path, err := exec.LookPath("redis-server")
	if err != nil {
		return fmt.Errorf("redis-server is not on PATH: %w", err)
	}
	// Right after a stop the old socket may still hold the port briefly.
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := start(ctx, path, s.opts, s.Port)
		if err == nil {
			*s = *n
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Exited reports whether the server has ended on its own.
func (s *Server) Exited() bool {
	if s.cmd == nil {
		return true
	}
	select {
	case err := <-s.exited:
		s.exited <- err
		return true
	default:
		return false
	}
}
