package deploy_test

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
)

func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var froms []string
	var user, entrypoint string
	cgoOff := false
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		switch strings.ToUpper(f[0]) {
		case "FROM":
			froms = append(froms, f[1])
			user = "" // USER applies per stage
		case "USER":
			user = f[1]
		case "ENTRYPOINT":
			entrypoint = strings.Join(f[1:], " ")
		}
		cgoOff = cgoOff || strings.Contains(line, "CGO_ENABLED=0")
	}
	if len(froms) < 2 {
		t.Fatalf("want a multi-stage build, have stages %v", froms)
	}
	if !strings.HasPrefix(froms[0], "golang:1.26") {
		t.Errorf("builder stage is %s, want golang:1.26", froms[0])
	}
	if !cgoOff {
		t.Error("the build does not set CGO_ENABLED=0")
	}
	final := froms[len(froms)-1]
	if !strings.HasPrefix(final, "gcr.io/distroless/static") && final != "scratch" {
		t.Errorf("final image %s is not distroless/static or scratch", final)
	}
	if user == "" || user == "root" || user == "0" || strings.HasPrefix(user, "0:") {
		t.Errorf("final stage runs as %q, want a non-root user", user)
	}
	var ep []string
	if err := json.Unmarshal([]byte(entrypoint), &ep); err != nil || len(ep) != 1 || !strings.HasSuffix(ep[0], "/keepwatch") {
		t.Errorf("ENTRYPOINT %s, want the keepwatch binary in exec form", entrypoint)
	}
}
