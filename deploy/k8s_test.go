package deploy_test

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
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

// podTemplates returns every Deployment's and Job's pod template with the
// object it belongs to.
func podTemplates(docs []doc) []doc {
	var out []doc
	for _, kind := range []string{"Deployment", "Job"} {
		out = append(out, byKind(docs, kind)...)
	}
	return out
}

// storePorts reads the Redis and MongoDB ports the ConfigMap points at.
func storePorts(t *testing.T, docs []doc) (redisPort int, mongoPorts []int) {
	t.Helper()
	var cm map[string]any
	for _, d := range byKind(docs, "ConfigMap") {
		if str(d.m, "metadata", "name") == "keepwatch" {
			cm = mapping(d.m, "data")
		}
	}
	u, err := url.Parse(fmt.Sprint(cm["KEEPWATCH_REDIS_URL"]))
	if err != nil || u.Port() == "" {
		t.Fatalf("KEEPWATCH_REDIS_URL %v has no port: %v", cm["KEEPWATCH_REDIS_URL"], err)
	}
	redisPort, _ = strconv.Atoi(u.Port())
	uri := strings.TrimPrefix(fmt.Sprint(cm["KEEPWATCH_MONGO_URI"]), "mongodb://")
	hosts, _, _ := strings.Cut(uri, "/")
	for _, h := range strings.Split(hosts, ",") {
		_, p, err := net.SplitHostPort(h)
		if err != nil {
			t.Fatalf("KEEPWATCH_MONGO_URI host %q: %v", h, err)
		}
		n, _ := strconv.Atoi(p)
		mongoPorts = append(mongoPorts, n)
	}
	return redisPort, mongoPorts
}

// policyPorts lists "PROTO/port" of every port a rule list of a policy allows.
func policyPorts(rules []any) map[string]bool {
	out := map[string]bool{}
	for _, r := range rules {
		for _, p := range list(r, "ports") {
			out[fmt.Sprintf("%s/%v", str(p, "protocol"), get(p, "port"))] = true
		}
	}
	return out
}

// TestNetworkPolicies checks that every keepwatch pod is fenced in both
// directions, and that its policy still lets through what the pod needs: its
// own HTTP port in, DNS out, and the Redis and MongoDB ports of the ConfigMap's
// URLs for the stores its subcommand uses. A policy that blocked any of them
// would take the service down the moment it is applied.
func TestNetworkPolicies(t *testing.T) {
	docs := k8sDocs(t)
	redisPort, mongoPorts := storePorts(t, docs)
	policies := byKind(docs, "NetworkPolicy")
	if len(policies) == 0 {
		t.Fatal("no NetworkPolicy")
	}
	for _, d := range podTemplates(docs) {
		name := str(d.m, "metadata", "name")
		labels := mapping(d.m, "spec", "template", "metadata", "labels")
		t.Run(fmt.Sprintf("%s %s", d.m["kind"], name), func(t *testing.T) {
			var pol map[string]any
			for _, p := range policies {
				if subset(mapping(p.m, "spec", "podSelector", "matchLabels"), labels) {
					if pol != nil {
						t.Fatalf("more than one NetworkPolicy selects the pods of %s", name)
					}
					pol = p.m
				}
			}
			if pol == nil {
				t.Fatalf("no NetworkPolicy selects the pods of %s (labels %v)", name, labels)
			}
			if types := strs(list(pol, "spec", "policyTypes")); !slices.Contains(types, "Ingress") || !slices.Contains(types, "Egress") {
				t.Errorf("policy %s has policyTypes %v, want Ingress and Egress", str(pol, "metadata", "name"), types)
			}
			in, out := policyPorts(list(pol, "spec", "ingress")), policyPorts(list(pol, "spec", "egress"))
			container := get(d.m, "spec", "template", "spec", "containers", 0)
			for _, p := range list(container, "ports") {
				if want := fmt.Sprintf("TCP/%v", get(p, "containerPort")); !in[want] {
					t.Errorf("ingress does not allow the container port %s", want)
				}
			}
			if !out["UDP/53"] {
				t.Error("egress does not allow DNS (UDP/53)")
			}
			args := strs(list(container, "args"))
			needRedis := len(args) > 0 && (args[0] == "command" || args[0] == "flush" || args[0] == "query")
			needMongo := len(args) > 0 && (args[0] == "migrate" || args[0] == "flush" || args[0] == "query" ||
				(args[0] == "command" && !slices.Contains(args, "--flush=false")))
			if needRedis && !out[fmt.Sprintf("TCP/%d", redisPort)] {
				t.Errorf("%v needs Redis, and egress does not allow TCP/%d (KEEPWATCH_REDIS_URL)", args, redisPort)
			}
			for _, p := range mongoPorts {
				if needMongo && !out[fmt.Sprintf("TCP/%d", p)] {
					t.Errorf("%v needs MongoDB, and egress does not allow TCP/%d (KEEPWATCH_MONGO_URI)", args, p)
				}
			}
		})
	}
}

// TestPodsReadTheSecretAndLeaveMemoryHeadroom guards two ways a correct-looking
// manifest fails in production: a credential moved into the Secret (as the
// ConfigMap advises) must reach every pod, so each reads the ConfigMap and
// then the Secret (which wins a key both define); and GOMEMLIMIT must sit
// below the memory limit, since the Go runtime's limit covers only what Go
// allocates and the kernel kills at the container's limit.
func TestPodsReadTheSecretAndLeaveMemoryHeadroom(t *testing.T) {
	for _, d := range podTemplates(k8sDocs(t)) {
		for _, c := range list(d.m, "spec", "template", "spec", "containers") {
			where := fmt.Sprintf("%s %s container %s", d.m["kind"], str(d.m, "metadata", "name"), str(c, "name"))
			var sources []string
			for _, ef := range list(c, "envFrom") {
				if r := mapping(ef, "configMapRef"); r != nil {
					sources = append(sources, "ConfigMap/"+str(r, "name"))
				}
				if r := mapping(ef, "secretRef"); r != nil {
					sources = append(sources, "Secret/"+str(r, "name"))
				}
			}
			if !slices.Equal(sources, []string{"ConfigMap/keepwatch", "Secret/keepwatch"}) {
				t.Errorf("%s: envFrom %v, want the ConfigMap keepwatch then the Secret keepwatch", where, sources)
			}
			limit, err := k8sBytes(str(c, "resources", "limits", "memory"))
			if err != nil {
				t.Errorf("%s: memory limit: %v", where, err)
				continue
			}
			var goLimit string
			for _, e := range list(c, "env") {
				if str(e, "name") == "GOMEMLIMIT" {
					goLimit = str(e, "value")
				}
			}
			n, err := goBytes(goLimit)
			if err != nil {
				t.Errorf("%s: GOMEMLIMIT %q: %v", where, goLimit, err)
				continue
			}
			if ratio := float64(n) / float64(limit); ratio > 0.9 || ratio < 0.5 {
				t.Errorf("%s: GOMEMLIMIT %s is %.0f%% of the %s memory limit, want 50–90%%", where, goLimit, ratio*100, str(c, "resources", "limits", "memory"))
			}
		}
	}
}

// k8sBytes parses a Kubernetes memory quantity in the binary suffixes the
// manifests use (Ki, Mi, Gi) or plain bytes.
func k8sBytes(q string) (int64, error) {
	for suffix, mul := range map[string]int64{"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30} {
		if n, ok := strings.CutSuffix(q, suffix); ok {
			v, err := strconv.ParseInt(n, 10, 64)
			return v * mul, err
		}
	}
	return strconv.ParseInt(q, 10, 64)
}

// goBytes parses GOMEMLIMIT's syntax: a number with B, KiB, MiB or GiB.
func goBytes(s string) (int64, error) {
	for _, u := range []struct {
		suffix string
		mul    int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"B", 1}} {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseInt(n, 10, 64)
			return v * u.mul, err
		}
	}
	return 0, fmt.Errorf("want a number with B, KiB, MiB or GiB")
}
