package deploy_test

import (
	"os/exec"
	"strings"
	"testing"
	"time"
)

// alertQueries lists every alert rule's PromQL expression, keyed "alert <name>".
func alertQueries(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, d := range readDocs(t, "prometheus/alerts.yaml") {
		groups := list(d.m, "groups")
		if len(groups) == 0 {
			t.Fatal("alerts.yaml has no groups")
		}
		for _, g := range groups {
			for _, r := range list(g, "rules") {
				name := str(r, "alert")
				if name == "" {
					t.Errorf("group %s: a rule has no alert name", str(g, "name"))
				}
				if str(r, "expr") == "" || str(r, "labels", "severity") == "" || str(r, "annotations", "summary") == "" {
					t.Errorf("alert %s needs expr, labels.severity and annotations.summary", name)
				}
				if f := str(r, "for"); f != "" {
					if _, err := time.ParseDuration(f); err != nil {
						t.Errorf("alert %s: for %q: %v", name, f, err)
					}
				}
				out["alert "+name] = str(r, "expr")
			}
		}
	}
	return out
}

// TestAlertRulesWithPromtool checks the rules with Prometheus' own tools:
// `promtool check rules` parses every expression with the real PromQL parser,
// and `promtool test rules` runs the committed cases of alerts_test.yaml
// (every alert firing when it should, and staying quiet when it should). It
// also makes sure no alert is left without a case.
func TestAlertRulesWithPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool is not on PATH: install Debian's prometheus package (apt-get install prometheus); .ci/run does")
	}
	for _, args := range [][]string{{"check", "rules", "alerts.yaml"}, {"test", "rules", "alerts_test.yaml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = "prometheus"
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	tested := map[string]bool{}
	for _, d := range readDocs(t, "prometheus/alerts_test.yaml") {
		for _, tc := range list(d.m, "tests") {
			for _, a := range list(tc, "alert_rule_test") {
				tested[str(a, "alertname")] = true
			}
		}
	}
	for k := range alertQueries(t) {
		if name := strings.TrimPrefix(k, "alert "); !tested[name] {
			t.Errorf("alert %s has no case in prometheus/alerts_test.yaml", name)
		}
	}
}
