package playersdk_test

import (
	"os/exec"
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
	cmd := exec.Command(node, "--test", "test/")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node --test test/: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}
