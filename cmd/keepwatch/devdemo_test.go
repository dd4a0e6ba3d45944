//go:build !nodev

package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

// TestDevDemoPageInChromium: the banner of `keepwatch dev` names the demo
// page, and in Debian's chromium the page plays a video, saves its progress
// through the player SDK and shows it in the keep-watching row
// (sdk/js/testdata/demo.test.js). The screenshot is kept where
// KEEPWATCH_DEMO_SCREENSHOT says, else in the test's temporary directory.
func TestDevDemoPageInChromium(t *testing.T) {
	node := browserTools(t)
	r := startDev(t, t.TempDir(), "--flush-interval", "200ms")
	m := regexp.MustCompile(`demo page\s+(http://\S+)`).FindStringSubmatch(r.out.String())
	if m == nil {
		t.Fatalf("the banner names no demo page:\n%s", r.out)
	}
	shot := os.Getenv("KEEPWATCH_DEMO_SCREENSHOT")
	if shot == "" {
		shot = filepath.Join(t.TempDir(), "demo.png")
	}
	runNodeTests(t, node, "demo.test.js", map[string]string{
		"KW_DEMO_URL":   m[1],
		"KW_QUERY_URL":  r.queryURL,
		"KW_TOKEN":      r.printedTok,
		"KW_SCREENSHOT": shot,
	})
	png, err := os.ReadFile(shot)
	if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Fatalf("no screenshot at %s: %v", shot, err)
	}
}
