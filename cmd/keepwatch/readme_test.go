package main

import (
	"bytes"
	"context"
	"flag"
	"log/slog"
	"os"
	"strings"
	"testing"
)

var updateReadme = flag.Bool("update-readme", false, "rewrite the README's --help block instead of checking it")

// TestReadmeShowsCurrentHelp keeps the README's `keepwatch --help` block equal
// to the binary's real output. Run `go test ./cmd/keepwatch -run Readme
// -update-readme` after changing subcommands.
func TestReadmeShowsCurrentHelp(t *testing.T) {
	var out bytes.Buffer
	env := &environment{stdout: &out, stderr: &out, getenv: func(string) string { return "" }, logger: slog.New(slog.DiscardHandler)}
	if code := Main(context.Background(), env, []string{"--help"}); code != 0 {
		t.Fatalf("keepwatch --help exited %d", code)
	}
	block := "<!-- help:start -->\n```console\n$ keepwatch --help\n" + out.String() + "```\n<!-- help:end -->"

	const path = "../../README.md"
	readme, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	start := bytes.Index(readme, []byte("<!-- help:start -->"))
	end := bytes.Index(readme, []byte("<!-- help:end -->"))
	if start < 0 || end < start {
		t.Fatal("README.md lacks the <!-- help:start --> … <!-- help:end --> markers")
	}
	end += len("<!-- help:end -->")
	current := string(readme[start:end])
	if current == block {
		return
	}
	if *updateReadme {
		updated := string(readme[:start]) + block + string(readme[end:])
		if err := os.WriteFile(path, []byte(updated), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("README.md's --help block is stale; run: go test ./cmd/keepwatch -run Readme -update-readme\nwant:\n%s\ngot:\n%s",
		block, strings.TrimSpace(current))
}
