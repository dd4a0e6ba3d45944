package keepwatch_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestSidesDependOnNoAdapter guards the direction of the dependencies: the
// command and query sides (and the flusher and replayer in command/flush)
// speak the domain of this package and declare the interfaces they need;
// only cmd/keepwatch wires the storage adapters in. It fails naming every
// package of a side that imports an adapter, directly or not.
func TestSidesDependOnNoAdapter(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is not on PATH, and this test asks it for the import graph: %v", err)
	}
	const module = "github.com/keepwatch/keepwatch"
	for _, side := range []string{"./command/...", "./query/..."} {
		t.Run(side, func(t *testing.T) {
			// Each dependency with its direct imports, so a failure can
			// name who brings an adapter in.
			out, err := exec.Command(gobin, "list", "-deps", "-f", `{{.ImportPath}} {{join .Imports " "}}`, side).CombinedOutput()
			if err != nil {
				t.Fatalf("go list -deps %s: %v\n%s", side, err, out)
			}
			adapter := func(p string) bool { return strings.HasPrefix(p, module+"/storage/") || p == module+"/storage" }
			listed := 0
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				pkg, imports, _ := strings.Cut(line, " ")
				listed++
				if adapter(pkg) || !strings.HasPrefix(pkg, module) {
					continue
				}
				for _, imp := range strings.Fields(imports) {
					if adapter(imp) {
						t.Errorf("%s imports the adapter %s: a side must depend on the domain's types and its own interfaces, and leave the wiring to cmd/keepwatch", pkg, imp)
					}
				}
			}
			if listed < 2 {
				t.Fatalf("go list -deps %s listed %d packages: the pattern matches nothing", side, listed)
			}
		})
	}
}
