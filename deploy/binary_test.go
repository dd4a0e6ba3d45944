package deploy_test

import (
	"os"
	"testing"

	"github.com/keepwatch/keepwatch/internal/testenv"
)

// buildKeepwatch builds the binary once per test run the way the Dockerfile
// does (CGO_ENABLED=0), which also proves the static build works.
func buildKeepwatch(t *testing.T) string {
	t.Helper()
	return testenv.BuildKeepwatch(t)
}

func TestMain(m *testing.M) {
	code := m.Run()
	testenv.RemoveBuilds()
	os.Exit(code)
}
