// Package deploy_test checks the deployment files as far as they can be
// checked without a container engine or a cluster: every YAML parses, the
// required fields are there, every flag and KEEPWATCH_* variable the files use
// exists in the real binary's --help, and every metric the alerts and the
// dashboard query is one the services export.
package deploy_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// doc is one YAML document of a file.
type doc struct {
	file string
	m    map[string]any
}

// yamlFiles lists every YAML file under deploy/.
func yamlFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(".", func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && (strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml")) {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 5 {
		t.Fatalf("found only %d YAML files: %v", len(files), files)
	}
	return files
}

// readDocs decodes every document of a multi-document YAML file.
func readDocs(t *testing.T, file string) []doc {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var docs []doc
	for {
		var m map[string]any
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: document %d does not parse: %v", file, len(docs)+1, err)
		}
		if m == nil {
			t.Errorf("%s: document %d is empty", file, len(docs)+1)
			continue
		}
		docs = append(docs, doc{file, m})
	}
	return docs
}

func TestYAMLParses(t *testing.T) {
	for _, f := range yamlFiles(t) {
		t.Run(f, func(t *testing.T) {
			if len(readDocs(t, f)) == 0 {
				t.Error("no documents")
			}
		})
	}
}

// get follows a path of map keys and list indexes ("spec", "template", 0).
func get(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func str(v any, path ...any) string {
	s, _ := get(v, path...).(string)
	return s
}

func list(v any, path ...any) []any {
	l, _ := get(v, path...).([]any)
	return l
}

func mapping(v any, path ...any) map[string]any {
	m, _ := get(v, path...).(map[string]any)
	return m
}

func strs(l []any) []string {
	out := make([]string, 0, len(l))
	for _, v := range l {
		out = append(out, fmt.Sprint(v))
	}
	return out
}

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

func subset(sub, super map[string]any) bool {
	if len(sub) == 0 {
		return false
	}
	for k, v := range sub {
		if super[k] != v {
			return false
		}
	}
	return true
}

func composeFile(t *testing.T) map[string]any {
	t.Helper()
	docs := readDocs(t, "compose.yaml")
	if len(docs) != 1 {
		t.Fatalf("compose.yaml has %d documents", len(docs))
	}
	return docs[0].m
}

// composeCommand returns a service's command (or entrypoint after the binary)
// as a list of arguments.
func composeCommand(svc map[string]any) []string {
	if c := list(svc, "command"); c != nil {
		return strs(c)
	}
	if e := strs(list(svc, "entrypoint")); len(e) > 0 && strings.HasSuffix(e[0], "/keepwatch") {
		return e[1:]
	}
	return nil
}

func TestComposeFile(t *testing.T) {
	c := composeFile(t)
	svcs := mapping(c, "services")
	for _, n := range []string{"mongo1", "mongo2", "mongo3"} {
		cmd := strings.Join(strs(list(svcs, n, "command")), " ")
		if !strings.Contains(cmd, "--replSet rs0") || !strings.HasPrefix(str(svcs, n, "image"), "mongo:7") {
			t.Errorf("%s: want mongo:7 with --replSet rs0, have %s %q", n, str(svcs, n, "image"), cmd)
		}
	}
	init := strings.Join(strs(list(svcs, "mongo-init", "entrypoint")), " ")
	for _, host := range []string{"rs.initiate", "mongo1:27017", "mongo2:27017", "mongo3:27017"} {
		if !strings.Contains(init, host) {
			t.Errorf("mongo-init does not mention %s", host)
		}
	}
	redis := strings.Join(strs(list(svcs, "redis", "command")), " ")
	if !strings.Contains(redis, "--appendonly yes") || !strings.Contains(redis, "--appendfsync everysec") {
		t.Errorf("redis runs %q: want AOF with appendfsync everysec", redis)
	}
	if !strings.HasPrefix(str(svcs, "redis", "image"), "redis:7") {
		t.Errorf("redis image %q, want redis:7", str(svcs, "redis", "image"))
	}
	if got := composeCommand(mapping(svcs, "migrate")); !slices.Equal(got, []string{"migrate", "up"}) {
		t.Errorf("migrate runs %v", got)
	}
	if str(svcs, "migrate", "depends_on", "mongo-init", "condition") != "service_completed_successfully" {
		t.Error("migrate does not wait for mongo-init to complete")
	}
	for _, s := range []string{"command", "flush", "query"} {
		svc := mapping(svcs, s)
		args := composeCommand(svc)
		if len(args) == 0 || args[0] != s {
			t.Errorf("service %s runs %v", s, args)
		}
		if str(svc, "depends_on", "migrate", "condition") != "service_completed_successfully" {
			t.Errorf("service %s does not wait for migrations", s)
		}
		if str(svc, "depends_on", "redis", "condition") != "service_healthy" {
			t.Errorf("service %s does not wait for Redis", s)
		}
		check := strings.Join(strs(list(svc, "healthcheck", "test")), " ")
		addr := str(svc, "environment", "KEEPWATCH_HTTP_ADDR")
		if !strings.Contains(check, "/readyz") || addr == "" || !strings.Contains(check, addr[strings.LastIndex(addr, ":"):]+"/readyz") {
			t.Errorf("service %s: health check %q does not poll /readyz on its address %q", s, check, addr)
		}
		if g, err := time.ParseDuration(str(svc, "stop_grace_period")); err != nil || g <= 15*time.Second {
			t.Errorf("service %s: stop_grace_period %q must exceed the 15s shutdown grace", s, str(svc, "stop_grace_period"))
		}
	}
	if args := composeCommand(mapping(svcs, "command")); !slices.Contains(args, "--flush=false") {
		t.Errorf("command runs %v: the flush service flushes, so it needs --flush=false", args)
	}
}

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

// usage is one place a deploy file runs keepwatch: the subcommand, the flags
// on its command line and the KEEPWATCH_* variables in its environment.
type usage struct {
	where string
	sub   []string
	flags []string
	vars  []string
}

var subcommands = []string{"command", "flush", "query", "migrate", "replay", "token", "dev"}

func splitArgs(where string, args []string) usage {
	u := usage{where: where}
	for _, a := range args {
		if strings.HasPrefix(a, "-") {
			name := strings.TrimLeft(a, "-")
			name, _, _ = strings.Cut(name, "=")
			u.flags = append(u.flags, name)
		} else if len(u.flags) == 0 && (len(u.sub) > 0 || slices.Contains(subcommands, a)) {
			u.sub = append(u.sub, a)
		}
	}
	return u
}

func envVars(names []string) []string {
	var out []string
	for _, n := range names {
		if strings.HasPrefix(n, "KEEPWATCH_") {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// usages collects every keepwatch invocation in compose.yaml and k8s/.
func usages(t *testing.T) []usage {
	t.Helper()
	var us []usage
	svcs := mapping(composeFile(t), "services")
	for name, svc := range svcs {
		if !strings.HasPrefix(str(svc, "image"), "keepwatch") {
			continue
		}
		u := splitArgs("compose service "+name, composeCommand(svc.(map[string]any)))
		if len(u.sub) == 0 {
			t.Errorf("compose service %s runs no subcommand", name)
			continue
		}
		var names []string
		for k := range mapping(svc, "environment") {
			names = append(names, k)
		}
		u.vars = envVars(names)
		us = append(us, u)
	}
	docs := k8sDocs(t)
	configKeys := map[string][]string{}
	for _, kind := range []string{"ConfigMap", "Secret"} {
		for _, d := range byKind(docs, kind) {
			data := mapping(d.m, "data")
			if data == nil {
				data = mapping(d.m, "stringData")
			}
			for k := range data {
				configKeys[kind+"/"+str(d.m, "metadata", "name")] = append(configKeys[kind+"/"+str(d.m, "metadata", "name")], k)
			}
		}
	}
	for _, d := range docs {
		for _, c := range list(d.m, "spec", "template", "spec", "containers") {
			where := fmt.Sprintf("%s %s container %s", d.m["kind"], str(d.m, "metadata", "name"), str(c, "name"))
			u := splitArgs(where, strs(list(c, "args")))
			var names []string
			for _, e := range list(c, "env") {
				names = append(names, str(e, "name"))
			}
			for _, ef := range list(c, "envFrom") {
				if r := mapping(ef, "configMapRef"); r != nil {
					names = append(names, configKeys["ConfigMap/"+str(r, "name")]...)
				}
				if r := mapping(ef, "secretRef"); r != nil {
					names = append(names, configKeys["Secret/"+str(r, "name")]...)
				}
			}
			u.vars = envVars(names)
			us = append(us, u)
		}
	}
	return us
}

// TestFlagsAndVariablesExist runs `keepwatch <subcommand> --help` of the real
// binary for every subcommand the deploy files run, and checks that every
// flag and KEEPWATCH_* variable they set is one it lists.
func TestFlagsAndVariablesExist(t *testing.T) {
	bin := buildKeepwatch(t)
	helps := map[string]*help{}
	for _, u := range usages(t) {
		key := strings.Join(u.sub, " ")
		h, ok := helps[key]
		if !ok {
			h = readHelp(t, bin, u.sub)
			helps[key] = h
		}
		for _, f := range u.flags {
			if !h.flags[f] {
				t.Errorf("%s: keepwatch %s has no flag --%s (%s)", u.where, key, f, h.source)
			}
		}
		for _, v := range u.vars {
			if !h.vars[v] {
				t.Errorf("%s: keepwatch %s reads no %s (%s)", u.where, key, v, h.source)
			}
		}
	}
	for key, h := range helps {
		t.Logf("keepwatch %s: checked against %s", key, h.source)
	}
}

type help struct {
	flags, vars map[string]bool
	source      string
}

var helpLine = regexp.MustCompile(`^\s+--([a-z0-9-]+)\s+\((KEEPWATCH_[A-Z0-9_]+), default `)

// readHelp parses `keepwatch <sub> --help`: "--name  (KEEPWATCH_NAME, default X)".
func readHelp(t *testing.T, bin string, sub []string) *help {
	t.Helper()
	args := append(slices.Clone(sub), "--help")
	cmd := exec.Command(bin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
	out, err := cmd.CombinedOutput()
	h := &help{flags: map[string]bool{}, vars: map[string]bool{}, source: "the binary's --help"}
	for _, line := range strings.Split(string(out), "\n") {
		if m := helpLine.FindStringSubmatch(line); m != nil {
			h.flags[m[1]] = true
			h.vars[m[2]] = true
		}
	}
	if len(h.flags) > 0 {
		return h
	}
	t.Fatalf("keepwatch %s: no flags in its help (err %v):\n%s", strings.Join(args, " "), err, out)
	return nil
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	buildDir  string
)

// buildKeepwatch builds the binary once per test run the way the Dockerfile
// does (CGO_ENABLED=0), which also proves the static build works.
func buildKeepwatch(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "keepwatch-deploy-test-")
		if err != nil {
			buildErr = err
			return
		}
		buildDir = dir
		binPath = filepath.Join(dir, "keepwatch")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/keepwatch")
		cmd.Dir = ".."
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/keepwatch with CGO_ENABLED=0: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// queries lists every PromQL expression in the alert rules and the dashboard.
func queries(t *testing.T) map[string]string {
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
	b, err := os.ReadFile("grafana/keepwatch.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			ID      int    `json:"id"`
			Type    string `json:"type"`
			Title   string `json:"title"`
			GridPos *struct {
				H, W, X, Y int
			} `json:"gridPos"`
			Targets []struct {
				RefID string `json:"refId"`
				Expr  string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("grafana/keepwatch.json: %v", err)
	}
	if dash.Title == "" || dash.UID == "" || len(dash.Panels) == 0 {
		t.Fatal("the dashboard needs a title, a uid and panels")
	}
	ids := map[int]bool{}
	for _, p := range dash.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d is used twice", p.ID)
		}
		ids[p.ID] = true
		if p.GridPos == nil || p.GridPos.W == 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q has a bad gridPos", p.Title)
		}
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if tg.Expr == "" {
				t.Errorf("panel %q target %s has no expr", p.Title, tg.RefID)
			}
			out[fmt.Sprintf("panel %q %s", p.Title, tg.RefID)] = tg.Expr
		}
	}
	return out
}

// metricSet is what the services export: metric names with their type and
// label names.
type metricSet struct {
	types  map[string]string
	labels map[string]map[string]bool
	source string
}

// contractMetrics is the metric list of the contract: the real services must
// export every one of them, with these types and labels.
func contractMetrics() *metricSet {
	ms := &metricSet{types: map[string]string{}, labels: map[string]map[string]bool{}, source: "the contract's metric list"}
	add := func(name, typ string, labels ...string) {
		ms.types[name] = typ
		ms.labels[name] = map[string]bool{}
		for _, l := range labels {
			ms.labels[name][l] = true
		}
	}
	add("keepwatch_events_accepted_total", "counter")
	add("keepwatch_events_rejected_total", "counter", "reason")
	add("keepwatch_http_request_duration_seconds", "histogram", "service", "route", "code")
	for _, g := range []string{"keepwatch_buffer_pending_entries", "keepwatch_buffer_oldest_pending_age_seconds",
		"keepwatch_buffer_high_water_entries", "keepwatch_dead_letters", "keepwatch_ready"} {
		add(g, "gauge")
	}
	for _, h := range []string{"keepwatch_commit_batch_size", "keepwatch_commit_duration_seconds",
		"keepwatch_flush_batch_size", "keepwatch_flush_duration_seconds"} {
		add(h, "histogram")
	}
	for _, c := range []string{"keepwatch_flush_written_total", "keepwatch_flush_stale_total", "keepwatch_flush_retried_total",
		"keepwatch_flush_dead_lettered_total", "keepwatch_query_overlay_hits_total", "keepwatch_query_overlay_errors_total",
		"keepwatch_query_mongo_errors_total", "keepwatch_query_not_modified_total"} {
		add(c, "counter")
	}
	return ms
}

var (
	metricName = regexp.MustCompile(`\bkeepwatch_[a-zA-Z0-9_]+`)
	byClause   = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	matcher    = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"`)
)

// checkQuery checks that expr names only exported metrics (histogram and
// summary series by their suffixes) and only labels those metrics carry.
func checkQuery(t *testing.T, where, expr string, ms *metricSet) {
	t.Helper()
	if strings.Count(expr, "(") != strings.Count(expr, ")") || strings.Count(expr, "{") != strings.Count(expr, "}") {
		t.Errorf("%s: unbalanced brackets in %q", where, expr)
	}
	names := metricName.FindAllString(expr, -1)
	if len(names) == 0 {
		t.Errorf("%s: names no keepwatch_ metric: %q", where, expr)
	}
	labels := map[string]bool{"job": true, "instance": true}
	for _, n := range names {
		base, typ := n, ms.types[n]
		if typ == "" {
			for _, suffix := range []string{"_bucket", "_count", "_sum"} {
				if b, ok := strings.CutSuffix(n, suffix); ok && (ms.types[b] == "histogram" || (ms.types[b] == "summary" && suffix != "_bucket")) {
					base, typ = b, ms.types[b]
					if suffix == "_bucket" {
						labels["le"] = true
					}
				}
			}
		}
		if typ == "" {
			t.Errorf("%s: metric %s is not exported (checked against %s)", where, n, ms.source)
			continue
		}
		for l := range ms.labels[base] {
			labels[l] = true
		}
	}
	var used []string
	for _, m := range byClause.FindAllStringSubmatch(expr, -1) {
		for _, l := range strings.Split(m[1], ",") {
			if l = strings.TrimSpace(l); l != "" {
				used = append(used, l)
			}
		}
	}
	for _, m := range matcher.FindAllStringSubmatch(expr, -1) {
		used = append(used, m[1])
	}
	for _, l := range used {
		if !labels[l] {
			t.Errorf("%s: label %q is not on %v (checked against %s)", where, l, names, ms.source)
		}
	}
}

func TestAlertAndDashboardMetricsExist(t *testing.T) {
	qs := queries(t)
	ms := exportedMetrics(t)
	t.Logf("metric names checked against %s", ms.source)
	for name, typ := range contractMetrics().types {
		if ms.types[name] != typ {
			t.Errorf("the contract's %s %s is exported as %q", typ, name, ms.types[name])
		}
		for l := range contractMetrics().labels[name] {
			if !ms.labels[name][l] {
				t.Errorf("the contract's %s has no label %q in the real /metrics", name, l)
			}
		}
	}
	for _, want := range []string{"keepwatch_buffer_oldest_pending_age_seconds", "keepwatch_dead_letters",
		"keepwatch_flush_dead_lettered_total", "keepwatch_http_request_duration_seconds_count",
		"keepwatch_buffer_pending_entries", "keepwatch_buffer_high_water_entries"} {
		found := false
		for k, q := range qs {
			found = found || (strings.HasPrefix(k, "alert ") && strings.Contains(q, want))
		}
		if !found {
			t.Errorf("no alert uses %s", want)
		}
	}
	keys := make([]string, 0, len(qs))
	for k := range qs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		checkQuery(t, k, qs[k], ms)
	}
}
