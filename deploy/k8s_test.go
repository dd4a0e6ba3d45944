package deploy_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// k8sDocs reads every manifest under k8s/.
func k8sDocs(t *testing.T) []doc {
	t.Helper()
	files, err := filepath.Glob("k8s/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no k8s manifests: %v", err)
	}
	var docs []doc
	for _, f := range files {
		docs = append(docs, readDocs(t, f)...)
	}
	return docs
}

func byKind(docs []doc, kind string) []doc {
	var out []doc
	for _, d := range docs {
		if d.m["kind"] == kind {
			out = append(out, d)
		}
	}
	return out
}

func TestKubernetesManifests(t *testing.T) {
	docs := k8sDocs(t)
	for _, d := range docs {
		if d.m["kind"] == "Kustomization" {
			continue
		}
		if str(d.m, "apiVersion") == "" || str(d.m, "kind") == "" || str(d.m, "metadata", "name") == "" {
			t.Errorf("%s: a %v lacks apiVersion, kind or metadata.name", d.file, d.m["kind"])
		}
	}

	t.Run("kustomization lists every manifest", func(t *testing.T) {
		k := byKind(docs, "Kustomization")
		if len(k) != 1 {
			t.Fatalf("want one Kustomization, have %d", len(k))
		}
		listed := strs(list(k[0].m, "resources"))
		files, _ := filepath.Glob("k8s/*.yaml")
		for _, f := range files {
			base := filepath.Base(f)
			if base != "kustomization.yaml" && !slices.Contains(listed, base) {
				t.Errorf("%s is not in kustomization.yaml resources", base)
			}
		}
		for _, r := range listed {
			if _, err := os.Stat(filepath.Join("k8s", r)); err != nil {
				t.Errorf("kustomization.yaml lists %s: %v", r, err)
			}
		}
	})

	configs := map[string]map[string]any{} // "ConfigMap/name" → data
	for _, kind := range []string{"ConfigMap", "Secret"} {
		for _, d := range byKind(docs, kind) {
			data := mapping(d.m, "data")
			if data == nil {
				data = mapping(d.m, "stringData")
			}
			configs[kind+"/"+str(d.m, "metadata", "name")] = data
		}
	}
	if len(configs["Secret/keepwatch"]) == 0 {
		t.Error("no Secret keepwatch")
	}
	for _, k := range []string{"KEEPWATCH_AUTH_SECRET", "KEEPWATCH_ADMIN_TOKEN"} {
		if _, ok := configs["Secret/keepwatch"][k]; !ok {
			t.Errorf("Secret keepwatch lacks %s", k)
		}
	}
	grace := 15 * time.Second // --shutdown-grace default
	if g, ok := configs["ConfigMap/keepwatch"]["KEEPWATCH_SHUTDOWN_GRACE"].(string); ok {
		var err error
		if grace, err = time.ParseDuration(g); err != nil {
			t.Fatalf("KEEPWATCH_SHUTDOWN_GRACE %q: %v", g, err)
		}
	}

	deployments := map[string]doc{}
	for _, d := range byKind(docs, "Deployment") {
		name := str(d.m, "metadata", "name")
		deployments[name] = d
		t.Run("Deployment "+name, func(t *testing.T) {
			checkPodSpec(t, d, configs)
			spec := mapping(d.m, "spec", "template", "spec")
			tgp, ok := spec["terminationGracePeriodSeconds"].(int)
			if !ok {
				t.Fatal("no terminationGracePeriodSeconds")
			}
			for _, c := range list(spec, "containers") {
				name := str(c, "name")
				if p := str(c, "livenessProbe", "httpGet", "path"); p != "/healthz" {
					t.Errorf("container %s: liveness probe path %q, want /healthz", name, p)
				}
				if p := str(c, "readinessProbe", "httpGet", "path"); p != "/readyz" {
					t.Errorf("container %s: readiness probe path %q, want /readyz", name, p)
				}
				ports := map[string]bool{}
				for _, p := range list(c, "ports") {
					ports[str(p, "name")] = true
				}
				for _, probe := range []string{"livenessProbe", "readinessProbe", "startupProbe"} {
					if port := get(c, probe, "httpGet", "port"); port != nil && !ports[fmt.Sprint(port)] {
						t.Errorf("container %s: %s port %v is not a named container port", name, probe, port)
					}
				}
				sleep, ok := get(c, "lifecycle", "preStop", "sleep", "seconds").(int)
				if !ok {
					t.Errorf("container %s: no preStop sleep", name)
				}
				need := time.Duration(sleep)*time.Second + grace
				if time.Duration(tgp)*time.Second <= need {
					t.Errorf("terminationGracePeriodSeconds %d must exceed preStop sleep %ds + shutdown grace %s", tgp, sleep, grace)
				}
			}
			sel := mapping(d.m, "spec", "selector", "matchLabels")
			labels := mapping(d.m, "spec", "template", "metadata", "labels")
			if len(sel) == 0 || !subset(sel, labels) {
				t.Errorf("selector %v does not select the pod labels %v", sel, labels)
			}
		})
	}
	for _, comp := range []string{"command", "flush", "query"} {
		d, ok := deployments["keepwatch-"+comp]
		if !ok {
			t.Errorf("no Deployment keepwatch-%s", comp)
			continue
		}
		if args := strs(list(d.m, "spec", "template", "spec", "containers", 0, "args")); len(args) == 0 || args[0] != comp {
			t.Errorf("Deployment keepwatch-%s runs %v", comp, args)
		}
	}
	if args := strs(list(deployments["keepwatch-command"].m, "spec", "template", "spec", "containers", 0, "args")); !slices.Contains(args, "--flush=false") {
		t.Errorf("keepwatch-command runs %v: the flusher has its own Deployment, so it needs --flush=false", args)
	}

	podLabels := func(name string) map[string]any {
		return mapping(deployments[name].m, "spec", "template", "metadata", "labels")
	}
	selectsSome := func(sel map[string]any) bool {
		for name := range deployments {
			if subset(sel, podLabels(name)) {
				return true
			}
		}
		return false
	}
	for _, d := range byKind(docs, "Service") {
		if !selectsSome(mapping(d.m, "spec", "selector")) {
			t.Errorf("Service %s selects no Deployment's pods", str(d.m, "metadata", "name"))
		}
	}
	for _, d := range byKind(docs, "PodDisruptionBudget") {
		if !selectsSome(mapping(d.m, "spec", "selector", "matchLabels")) {
			t.Errorf("PodDisruptionBudget %s selects no Deployment's pods", str(d.m, "metadata", "name"))
		}
	}
	hpas := byKind(docs, "HorizontalPodAutoscaler")
	if len(hpas) == 0 {
		t.Error("no HorizontalPodAutoscaler")
	}
	for _, d := range hpas {
		target := str(d.m, "spec", "scaleTargetRef", "name")
		dep, ok := deployments[target]
		if !ok || str(d.m, "spec", "scaleTargetRef", "kind") != "Deployment" {
			t.Errorf("HorizontalPodAutoscaler %s targets %s, which is not a Deployment here", str(d.m, "metadata", "name"), target)
			continue
		}
		if _, fixed := mapping(dep.m, "spec")["replicas"]; fixed {
			t.Errorf("Deployment %s sets replicas although an autoscaler owns them", target)
		}
		if get(dep.m, "spec", "template", "spec", "containers", 0, "resources", "requests", "cpu") == nil {
			t.Errorf("Deployment %s has no CPU request for its CPU autoscaler", target)
		}
	}
	for _, kind := range []string{"Service", "PodDisruptionBudget"} {
		for _, comp := range []string{"command", "flush", "query"} {
			found := false
			for _, d := range byKind(docs, kind) {
				found = found || str(d.m, "metadata", "name") == "keepwatch-"+comp
			}
			if !found {
				t.Errorf("no %s keepwatch-%s", kind, comp)
			}
		}
	}
	jobs := byKind(docs, "Job")
	if len(jobs) != 1 {
		t.Fatalf("want one migration Job, have %d", len(jobs))
	}
	checkPodSpec(t, jobs[0], configs)
	if args := strs(list(jobs[0].m, "spec", "template", "spec", "containers", 0, "args")); !slices.Equal(args, []string{"migrate", "up"}) {
		t.Errorf("migration Job runs %v, want [migrate up]", args)
	}
}

// checkPodSpec checks what every keepwatch pod needs: resources, a non-root
// security context, and references to ConfigMap/Secret keys that exist.
func checkPodSpec(t *testing.T, d doc, configs map[string]map[string]any) {
	t.Helper()
	spec := mapping(d.m, "spec", "template", "spec")
	if get(spec, "securityContext", "runAsNonRoot") != true {
		t.Errorf("%s %s: pod does not set runAsNonRoot", d.m["kind"], str(d.m, "metadata", "name"))
	}
	containers := list(spec, "containers")
	if len(containers) == 0 {
		t.Fatalf("%s %s has no containers", d.m["kind"], str(d.m, "metadata", "name"))
	}
	for _, c := range containers {
		name := str(c, "name")
		if str(c, "image") == "" {
			t.Errorf("container %s: no image", name)
		}
		for _, r := range []string{"cpu", "memory"} {
			if get(c, "resources", "requests", r) == nil {
				t.Errorf("container %s: no %s request", name, r)
			}
		}
		if get(c, "resources", "limits", "memory") == nil {
			t.Errorf("container %s: no memory limit", name)
		}
		if get(c, "securityContext", "allowPrivilegeEscalation") != false {
			t.Errorf("container %s: allowPrivilegeEscalation is not false", name)
		}
		for _, e := range list(c, "env") {
			for kind, ref := range map[string]string{"ConfigMap": "configMapKeyRef", "Secret": "secretKeyRef"} {
				if r := mapping(e, "valueFrom", ref); r != nil {
					data, ok := configs[kind+"/"+str(r, "name")]
					if _, has := data[str(r, "key")]; !ok || !has {
						t.Errorf("container %s: %s refers to %s %s key %s, which does not exist", name, str(e, "name"), kind, str(r, "name"), str(r, "key"))
					}
				}
			}
		}
		for _, ef := range list(c, "envFrom") {
			for kind, ref := range map[string]string{"ConfigMap": "configMapRef", "Secret": "secretRef"} {
				if r := mapping(ef, ref); r != nil {
					if _, ok := configs[kind+"/"+str(r, "name")]; !ok {
						t.Errorf("container %s: envFrom %s %s does not exist", name, kind, str(r, "name"))
					}
				}
			}
		}
	}
}
