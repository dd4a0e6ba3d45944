package playersdk_test

import (
	"os/exec"
	"path/filepath"
	"testing"
)

// TestUnitTestsUnderNode runs the SDK's unit tests (test/*.test.js) with
// Node's own test runner. Node is required: CI installs it.
func TestUnitTestsUnderNode(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node is not on PATH: install Node.js 20 or later (Debian: apt-get install nodejs); .ci/run does")
	}
	if err := exec.Command(node, "-e", "process.exit(+process.versions.node.split('.')[0] >= 20 ? 0 : 1)").Run(); err != nil {
		t.Fatalf("%s is older than Node.js 20, which the tests' runner and playwright-core need: install Node.js 20 or later", node)
	}
	files, err := filepath.Glob("test/*.test.js")
	if err != nil || len(files) == 0 {
		t.Fatalf("no test/*.test.js: %v", err)
	}
	out, err := exec.Command(node, append([]string{"--test"}, files...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("node --test %v: %v\n%s", files, err, out)
	}
	t.Logf("%s", out)
}
