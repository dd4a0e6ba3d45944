package deploy_test

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/keepwatch/keepwatch/internal/testenv"
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

// dockerBuildFlags returns the flags the Dockerfile passes to `go build`
// (between "go build" and "-o"), with its continuation lines joined.
func dockerBuildFlags(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(b), "\\\n", " ")
	for _, line := range strings.Split(text, "\n") {
		f := shellWords(line)
		for i := 0; i+1 < len(f); i++ {
			if f[i] != "go" || f[i+1] != "build" {
				continue
			}
			var flags []string
			for _, a := range f[i+2:] {
				if a == "-o" {
					return flags
				}
				flags = append(flags, a)
			}
		}
	}
	t.Fatal("the Dockerfile has no `go build ... -o` line")
	return nil
}

// devStack are the modules of `keepwatch dev`'s embedded servers and what
// they pull in; none of them belongs in the production image.
var devStack = []string{
	"github.com/FerretDB/FerretDB", "modernc.org/sqlite", "github.com/alicebob/miniredis/v2",
	"github.com/yuin/gopher-lua", "github.com/jackc/pgx/v5", "github.com/go-sql-driver/mysql",
	"google.golang.org/grpc", "go.opentelemetry.io/otel", "go.mongodb.org/mongo-driver",
}

// TestProductionBinaryHasNoDevStack builds the binary exactly as the
// Dockerfile does and reads its module list: the development stack
// (FerretDB, SQLite, miniredis, gopher-lua and their dependencies) must not
// be linked into what runs in production, and `keepwatch dev` in it must say
// why it is missing.
func TestProductionBinaryHasNoDevStack(t *testing.T) {
	flags := dockerBuildFlags(t)
	if !slices.Contains(flags, "-tags") {
		t.Fatalf("the Dockerfile builds with %v: without -tags nodev the image carries the dev stack", flags)
	}
	bin := testenv.BuildKeepwatch(t, flags...)
	out, err := exec.Command("go", "version", "-m", bin).CombinedOutput()
	if err != nil {
		t.Fatalf("go version -m: %v\n%s", err, out)
	}
	modules := 0
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "dep" {
			continue
		}
		modules++
		for _, m := range devStack {
			// go.mongodb.org/mongo-driver is FerretDB's v1 driver; keepwatch's
			// own is .../v2.
			if f[1] == m || strings.HasPrefix(f[1], m+"/") && !strings.HasPrefix(f[1], "go.mongodb.org/mongo-driver/v2") {
				t.Errorf("the production binary links %s %s", f[1], f[2])
			}
		}
	}
	if st, err := os.Stat(bin); err == nil {
		t.Logf("production binary (%v): %.1f MB, %d modules", flags, float64(st.Size())/1e6, modules)
	}
	dev := exec.Command(bin, "dev")
	msg, err := dev.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(msg), "nodev") {
		t.Errorf("`keepwatch dev` in the production binary: %v\n%s\nwant exit 2 naming the nodev build", err, msg)
	}
	if out, err := exec.Command(bin, "command", "--help").CombinedOutput(); err != nil || !strings.Contains(string(out), "--redis-url") {
		t.Errorf("`keepwatch command --help` in the production binary: %v\n%s", err, out)
	}
}

// TestDockerfileStampsTheBuild builds the binary with the Dockerfile's flags,
// its VERSION and REVISION build arguments set, and checks that `keepwatch
// --version` reports them: the build context has no .git to read them from.
func TestDockerfileStampsTheBuild(t *testing.T) {
	b, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	for _, arg := range []string{"ARG VERSION", "ARG REVISION"} {
		if !strings.Contains(string(b), "\n"+arg+"\n") {
			t.Errorf("the Dockerfile does not declare %s", arg)
		}
	}
	args := strings.NewReplacer("${VERSION}", "4.5.6-test", "${REVISION}", "cafe0123")
	var flags []string
	for _, f := range dockerBuildFlags(t) {
		flags = append(flags, args.Replace(f))
	}
	bin := testenv.BuildKeepwatch(t, flags...)
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "keepwatch version 4.5.6-test, revision cafe0123, go") {
		t.Fatalf("keepwatch --version of the image's build: %v\n%s", err, out)
	}
}

// shellWords splits a shell line into words as sh does for the simple forms a
// Dockerfile RUN uses here: blanks separate words, double quotes group and
// are removed.
func shellWords(line string) []string {
	var (
		words  []string
		cur    strings.Builder
		quoted bool
		inWord bool
	)
	for _, r := range line {
		switch {
		case r == '"':
			quoted = !quoted
			inWord = true
		case (r == ' ' || r == '\t') && !quoted:
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}
