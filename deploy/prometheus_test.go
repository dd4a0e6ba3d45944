package deploy_test

import (
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
