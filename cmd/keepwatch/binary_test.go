package main

import (
	"os"
	"testing"

	"github.com/keepwatch/keepwatch/internal/testenv"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testenv.RemoveBuilds()
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
	return testenv.BuildKeepwatch(t)
}

// running fails the test if the process has exited.
func running(t *testing.T, p *testenv.Proc) {
	t.Helper()
	if exited, err := p.Exited(); exited {
		t.Fatalf("the process exited (%v):\n%s", err, p.Logs)
	}
}
