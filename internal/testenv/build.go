package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var (
	buildMu   sync.Mutex
	builds    = map[string]*build{}
	buildRoot string
)

type build struct {
	path string
	err  error
}

// BuildKeepwatch builds ./cmd/keepwatch of this module once per test binary
// and set of go build flags (CGO_ENABLED=0, as the image does), for the tests
// that need a real process: a signal, an open-file limit, `go version -m`.
// The package's TestMain calls RemoveBuilds after the run.
func BuildKeepwatch(t testing.TB, flags ...string) string {
	t.Helper()
	key := strings.Join(flags, "\x00")
	buildMu.Lock()
	defer buildMu.Unlock()
	if b, ok := builds[key]; ok {
		if b.err != nil {
			t.Fatal(b.err)
		}
		return b.path
	}
	b := &build{}
	builds[key] = b
	b.path, b.err = goBuild(flags)
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

func goBuild(flags []string) (string, error) {
	if buildRoot == "" {
		dir, err := os.MkdirTemp("", "keepwatch-test-build-")
		if err != nil {
			return "", fmt.Errorf("build keepwatch: %w", err)
		}
		buildRoot = dir
	}
	out := filepath.Join(buildRoot, fmt.Sprintf("keepwatch-%d", len(builds)))
	mod, err := moduleRoot()
	if err != nil {
		return "", err
	}
	args := append(append([]string{"build"}, flags...), "-o", out, "./cmd/keepwatch")
	cmd := exec.Command("go", args...)
	cmd.Dir = mod
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	return out, nil
}

// moduleRoot finds the directory of keepwatch's go.mod from the working
// directory (a test runs in its package's directory).
func moduleRoot() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", fmt.Errorf("no go.mod above %s", d)
		}
		d = parent
	}
}

// RemoveBuilds deletes what BuildKeepwatch built; TestMain calls it after
// m.Run.
func RemoveBuilds() {
	buildMu.Lock()
	defer buildMu.Unlock()
	if buildRoot != "" {
		_ = os.RemoveAll(buildRoot)
	}
}
