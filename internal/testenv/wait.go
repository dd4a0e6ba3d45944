package testenv

import (
	"fmt"
	"net/http"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// Eventually polls cond every few milliseconds until it holds, and fails the
// test naming what it waited for when timeout passes first. Tests wait on a
// condition a user could check (an answer, a metric, a stored value), never on
// a fixed sleep.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Await is Eventually for a condition that can say why it does not hold yet:
// it polls check until it returns nil, and on timeout fails the test with the
// last reason.
func Await(t testing.TB, timeout time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s: %v", timeout, what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Proc is a child process owned by one test: its output is kept for the
// failure message, and it gets SIGTERM (and is waited for) when the test ends.
type Proc struct {
	t      testing.TB
	cmd    *exec.Cmd
	Logs   *Output
	exited chan error
	err    error
	done   bool
}

// StartProc starts cmd, collecting its stdout and stderr.
func StartProc(t testing.TB, cmd *exec.Cmd) *Proc {
	t.Helper()
	p := &Proc{t: t, cmd: cmd, Logs: &Output{}, exited: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = p.Logs, p.Logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	go func() { p.exited <- cmd.Wait() }()
	t.Cleanup(func() { p.Stop() })
	return p
}

// Exited reports whether the process has ended, and its error.
func (p *Proc) Exited() (bool, error) {
	if p.done {
		return true, p.err
	}
	select {
	case p.err = <-p.exited:
		p.done = true
		return true, p.err
	default:
		return false, nil
	}
}

// Wait waits for the process to end by itself, at most timeout.
func (p *Proc) Wait(timeout time.Duration) error {
	p.t.Helper()
	if p.done {
		return p.err
	}
	select {
	case p.err = <-p.exited:
		p.done = true
		return p.err
	case <-time.After(timeout):
		p.t.Fatalf("%s still running after %s:\n%s", p.cmd.Path, timeout, p.Logs)
		return nil
	}
}

// Stop sends SIGTERM and waits for the exit (SIGKILL after 30 s).
func (p *Proc) Stop() error {
	if p.done {
		return p.err
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case p.err = <-p.exited:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		p.err = <-p.exited
	}
	p.done = true
	return p.err
}

// WaitHTTP waits until GET url answers want, failing the test with the
// process' output if it exits first or timeout passes.
func (p *Proc) WaitHTTP(url string, want int, timeout time.Duration) {
	p.t.Helper()
	waitHTTP(p.t, url, want, timeout, func() string {
		if exited, err := p.Exited(); exited {
			return fmt.Sprintf("%s exited (%v) before GET %s answered %d:\n%s", p.cmd.Path, err, url, want, p.Logs)
		}
		return ""
	}, p.Logs)
}

// WaitHTTP waits until GET url answers want, failing the test after timeout
// with the last answer or error. The timeout only stops a hung test; nothing
// is asserted about speed.
func WaitHTTP(t testing.TB, url string, want int, timeout time.Duration) {
	t.Helper()
	waitHTTP(t, url, want, timeout, func() string { return "" }, nil)
}

// WaitHTTPUnless is WaitHTTP that gives up at once, failing with what gone
// says, when gone says something: the server it waits for has stopped.
func WaitHTTPUnless(t testing.TB, url string, want int, timeout time.Duration, gone func() string) {
	t.Helper()
	waitHTTP(t, url, want, timeout, gone, nil)
}

// waitHTTP is WaitHTTPUnless that adds logs, when set, to a timeout's failure.
func waitHTTP(t testing.TB, url string, want int, timeout time.Duration, gone func() string, logs fmt.Stringer) {
	t.Helper()
	c := &http.Client{Timeout: time.Second}
	last := "no answer"
	deadline := time.Now().Add(timeout)
	for {
		if why := gone(); why != "" {
			t.Fatal(why)
		}
		resp, err := c.Get(url)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == want {
				return
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			if logs != nil {
				t.Fatalf("GET %s did not answer %d within %s (last: %s):\n%s", url, want, timeout, last, logs)
			}
			t.Fatalf("GET %s did not answer %d within %s (last: %s)", url, want, timeout, last)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
