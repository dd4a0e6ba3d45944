// Package proc starts and watches the processes a benchmark runs against: the
// servers under test (pinned to a CPU core with taskset), their redis-server,
// and reads their CPU time and resident memory from /proc.
package proc

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/keepwatch/keepwatch/internal/redisserver"
)

// Process is a child process started by a benchmark.
type Process struct {
	Name string
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{}
	err  error
}

// Spec says how to start a child process.
type Spec struct {
	// Name labels the process in errors and log file names.
	Name string
	// Path and Args are the program and its arguments.
	Path string
	Args []string
	// Env is added to the parent's environment.
	Env []string
	// Core pins the process to one CPU core through taskset; -1 leaves it free.
	Core int
	// LogDir receives NAME.log with the process' stdout and stderr.
	LogDir string
}

// Start starts the process. It is stopped by Stop, never left running: the
// caller defers Stop.
func Start(s Spec) (*Process, error) {
	path, args := s.Path, s.Args
	if s.Core >= 0 {
		ts, err := exec.LookPath("taskset")
		if err != nil {
			return nil, fmt.Errorf("pin %s to core %d: taskset is not on PATH (Debian: apt-get install util-linux): %w", s.Name, s.Core, err)
		}
		args = append([]string{"-c", strconv.Itoa(s.Core), path}, args...)
		path = ts
	}
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), s.Env...)
	// A process group of its own, so a Ctrl-C on the benchmark reaches the
	// benchmark first and it stops its children in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := &Process{Name: s.Name, cmd: cmd, done: make(chan struct{})}
	if s.LogDir != "" {
		f, err := os.Create(filepath.Join(s.LogDir, s.Name+".log"))
		if err != nil {
			return nil, fmt.Errorf("create log of %s: %w", s.Name, err)
		}
		p.log = f
		cmd.Stdout, cmd.Stderr = f, f
	}
	if err := cmd.Start(); err != nil {
		if p.log != nil {
			_ = p.log.Close()
		}
		return nil, fmt.Errorf("start %s: %w", s.Name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// PID is the process id (of the server itself: taskset execs it in place).
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended, and how.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Stop sends SIGTERM, waits up to grace for the exit, then kills.
func (p *Process) Stop(grace time.Duration) error {
	if exited, _ := p.Exited(); !exited {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	if p.log != nil {
		_ = p.log.Close()
	}
	var ee *exec.ExitError
	if p.err != nil && !errors.As(p.err, &ee) {
		return fmt.Errorf("stop %s: %w", p.Name, p.err)
	}
	return nil
}

// WaitHTTP polls url until it answers 200, the process exits or limit passes.
func WaitHTTP(ctx context.Context, p *Process, url string, limit time.Duration) error {
	c := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(limit)
	var last error
	for time.Now().Before(deadline) {
		if p != nil {
			if exited, err := p.Exited(); exited {
				return fmt.Errorf("%s exited before it was ready (see its log): %v", p.Name, err)
			}
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return fmt.Errorf("wait for %s: %w", url, err)
		}
		resp, err := c.Do(req)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Errorf("status %d", resp.StatusCode)
		} else {
			last = err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not ready after %s: %v", url, limit, last)
}

// Redis is a redis-server child started for one benchmark target.
type Redis struct {
	srv *redisserver.Server
}

// URL is the redis:// URL of the server.
func (r *Redis) URL() string { return r.srv.URL() }

// PID is the redis-server's process id, for ReadUsage.
func (r *Redis) PID() int { return r.srv.PID }

// Stop stops the server, killing it after grace.
func (r *Redis) Stop(grace time.Duration) error { return r.srv.Stop(grace) }

// StartRedis starts redis-server on a free port, pinned to core (-1: free),
// with aof as its persistence: "no" (none: the benchmark measures keepwatch,
// not the disk), "everysec" or "always" (an append-only file in dir/name
// fsynced every second or on every write, as production runs it). "" is "no".
func StartRedis(ctx context.Context, name, dir string, core int, aof string) (*Redis, error) {
	srv, err := redisserver.Start(ctx, redisserver.Options{Dir: filepath.Join(dir, name), AppendFsync: aof, Core: core,
		LogFile: filepath.Join(dir, name+".log")})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &Redis{srv: srv}, nil
}

// Usage is a process' cumulative CPU time and current resident memory.
type Usage struct {
	CPU time.Duration
	RSS int64 // bytes
}

// clockTicks is USER_HZ, 100 on every Linux architecture Go supports.
const clockTicks = 100

// ReadUsage reads /proc/PID/stat (utime+stime) and /proc/PID/status (VmRSS).
func ReadUsage(pid int) (Usage, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Usage{}, fmt.Errorf("read cpu of %d: %w", pid, err)
	}
	// The command name (field 2) may hold spaces: fields are counted after ')'.
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return Usage{}, fmt.Errorf("parse /proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(s[i+1:])
	// After ')': state(3) ... utime is field 14, stime 15 → indexes 11, 12.
	if len(f) < 13 {
		return Usage{}, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f))
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return Usage{}, fmt.Errorf("parse /proc/%d/stat: %w", pid, err)
	}
	u := Usage{CPU: time.Duration(ut+st) * time.Second / clockTicks}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Usage{}, fmt.Errorf("read rss of %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return Usage{}, fmt.Errorf("parse VmRSS of %d: %w", pid, err)
			}
			u.RSS = kb * 1024
		}
	}
	return u, nil
}
