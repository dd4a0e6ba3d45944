package main

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/keepwatch/keepwatch/internal/testenv"
)

// TestFinishedThresholdStillWorks guards the deprecated name deployments
// set: --finished-threshold and KEEPWATCH_FINISHED_THRESHOLD set the
// finished percent, with a warning naming the new flag.
func TestFinishedThresholdStillWorks(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want float64
	}{
		{"default", nil, nil, 95},
		{"new flag", nil, []string{"--finished-percent", "90"}, 90},
		{"old flag", nil, []string{"--finished-threshold", "80"}, 80},
		{"old variable", map[string]string{"KEEPWATCH_FINISHED_THRESHOLD": "85"}, nil, 85},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := &testenv.Output{}
			env := &environment{stdout: out, stderr: out, getenv: func(k string) string { return tc.env[k] },
				logger: slog.New(slog.NewTextHandler(out, nil))}
			fs := newFlagSet(env, "query", "")
			var c rulesConfig
			c.register(fs)
			if err := parseFlags(env, fs, tc.args); err != nil {
				t.Fatal(err)
			}
			r, err := c.get(env.logger)
			if err != nil || r.FinishedPercent != tc.want {
				t.Fatalf("finished percent %v, %v; want %v", r.FinishedPercent, err, tc.want)
			}
			deprecated := tc.name == "old flag" || tc.name == "old variable"
			if warned := strings.Contains(out.String(), "--finished-threshold (KEEPWATCH_FINISHED_THRESHOLD) is deprecated"); warned != deprecated {
				t.Fatalf("warned %v, want %v: %s", warned, deprecated, out)
			}
		})
	}
}
