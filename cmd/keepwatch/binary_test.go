package main

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keepwatch/keepwatch/internal/testenv"
)

var (
	buildOnce sync.Once
	buildDir  string
	binPath   string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// buildBinary builds keepwatch once per test run, for the tests that need a
// real process (a signal, an open-file limit). go build is slow on a cold
// cache, so -short skips them; CI runs them.
func buildBinary(t *testing.T, why string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: builds the keepwatch binary with go build to " + why + " (slow on a cold cache); CI runs it")
	}
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "keepwatch-cmd-test-")
		if buildErr != nil {
			return
		}
		binPath = filepath.Join(buildDir, "keepwatch")
		if out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// proc is a keepwatch child process.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	logs   *testenv.Output
	exited chan struct{}
	err    error // after exited is closed
}

// startProc starts cmd, stopping it (SIGTERM, then SIGKILL) when the test
// ends.
func startProc(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{t: t, cmd: cmd, logs: &testenv.Output{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

// running fails the test if the process has exited.
func (p *proc) running() {
	p.t.Helper()
	select {
	case <-p.exited:
		p.t.Fatalf("the process exited (%v):\n%s", p.err, p.logs)
	default:
	}
}

// waitStatus polls url until it answers want, failing if the process exits.
func (p *proc) waitStatus(url string, want int) {
	p.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for {
		resp, err := client.Get(url)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == want {
				return
			}
		}
		p.running()
		if time.Now().After(deadline) {
			p.t.Fatalf("%s never answered %d (last: %v)\n%s", url, want, err, p.logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
