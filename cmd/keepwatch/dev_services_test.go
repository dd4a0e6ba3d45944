//go:build !nodev

package main

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keepwatch/keepwatch/internal/testenv"
)

// TestDevSurvivesIdleFloodUnderLowFileLimit: keepwatch dev under `ulimit -n
// 512` used to lose both APIs to 600 idle connections. Now both keep
// answering through a flood on each and serve normally after.
func TestDevSurvivesIdleFloodUnderLowFileLimit(t *testing.T) {
	bin := buildBinary(t, "run it under a low open-file limit")
	cmdAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	queryAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	p := testenv.StartProc(t, underFileLimit(bin, 512, "dev", "--data-dir", t.TempDir(),
		"--command-addr", cmdAddr, "--query-addr", queryAddr))
	for _, a := range []string{cmdAddr, queryAddr} {
		p.WaitHTTP("http://"+a+"/readyz", http.StatusOK, time.Minute)
	}
	tok := devTokenRE.FindString(p.Logs.String())
	if tok == "" {
		t.Fatalf("no token printed:\n%s", p.Logs)
	}
	floods := []*flooded{flood(t, cmdAddr, "127.0.0.2", 600), flood(t, queryAddr, "127.0.0.3", 600)}
	running(t, p)
	for _, a := range []string{cmdAddr, queryAddr} {
		answers(t, "http://"+a+"/healthz")
	}
	t.Logf("command: %v; query: %v", floods[0].statuses, floods[1].statuses)
	for _, f := range floods {
		f.close()
	}
	for _, a := range []string{cmdAddr, queryAddr} {
		p.WaitHTTP("http://"+a+"/healthz", http.StatusOK, time.Minute)
	}
	if code := postProgress(t, "http://"+cmdAddr, tok, `{"video_id":"after-flood","percent":5}`); code != http.StatusAccepted {
		t.Fatalf("POST after the flood: %d\n%s", code, p.Logs)
	}
	req, _ := http.NewRequest(http.MethodGet, "http://"+queryAddr+"/v1/keep-watching", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "after-flood") {
		t.Fatalf("keep-watching after the flood: %d %s", resp.StatusCode, body)
	}
	running(t, p)
}

// TestDevHandsTheRulesToItsQueryService: keepwatch dev takes the rule flags
// and gives them to the query service it runs.
func TestDevHandsTheRulesToItsQueryService(t *testing.T) {
	out := &testenv.Output{}
	env := &environment{stdout: out, stderr: out, getenv: func(string) string { return "" }, logger: slog.New(slog.NewTextHandler(out, nil))}
	fs := newFlagSet(env, "dev", "")
	var dc devConfig
	dc.register(fs)
	if err := parseFlags(env, fs, []string{"--finished-threshold", "90", "--finished-remaining", "120", "--min-resume-seconds", "30",
		"--keep-watching-max-age", "720h"}); err != nil {
		t.Fatal(err)
	}
	flags, err := dc.queryFlags(env.logger)
	if err != nil {
		t.Fatal(err)
	}
	var qc queryConfig
	if err := setFlags("query", qc.register, flags); err != nil {
		t.Fatal(err)
	}
	r, err := qc.rules.get(env.logger)
	if err != nil {
		t.Fatal(err)
	}
	if r.FinishedPercent != 90 || r.FinishedRemaining != 120 || r.MinResumeSeconds != 30 || qc.rules.maxAge != 720*time.Hour {
		t.Fatalf("query rules %+v, max age %s", r, qc.rules.maxAge)
	}
	if err := parseFlags(env, fs, []string{"--min-resume-percent", "99"}); err == nil {
		if _, err := dc.queryFlags(env.logger); err == nil {
			t.Fatal("a minimum above the finished percent was accepted")
		}
	}
}
