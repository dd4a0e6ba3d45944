package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

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

// running fails the test if the process has exited.
func running(t *testing.T, p *testenv.Proc) {
	t.Helper()
	if exited, err := p.Exited(); exited {
		t.Fatalf("the process exited (%v):\n%s", err, p.Logs)
	}
}
