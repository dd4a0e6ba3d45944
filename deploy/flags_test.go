package deploy_test

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
)

// usage is one place a deploy file runs keepwatch: the subcommand, the flags
// on its command line, the KEEPWATCH_* variables set for it alone and the
// shared sources (envFrom: "ConfigMap/name") it reads every key of.
type usage struct {
	where  string
	sub    []string
	flags  []string
	vars   []string
	shared []string
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

// usages collects every keepwatch invocation in compose.yaml and k8s/, and
// the KEEPWATCH_* keys of each shared source (ConfigMap, Secret) by name.
func usages(t *testing.T) ([]usage, map[string][]string) {
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
					u.shared = append(u.shared, "ConfigMap/"+str(r, "name"))
				}
				if r := mapping(ef, "secretRef"); r != nil {
					u.shared = append(u.shared, "Secret/"+str(r, "name"))
				}
			}
			u.vars = envVars(names)
			us = append(us, u)
		}
	}
	for k, v := range configKeys {
		configKeys[k] = envVars(v)
	}
	return us, configKeys
}

// TestFlagsAndVariablesExist runs `keepwatch <subcommand> --help` of the real
// binary for every subcommand the deploy files run, and checks that every
// flag and KEEPWATCH_* variable they set is one it lists. A key of a shared
// ConfigMap or Secret reaches several subcommands, and only some read it (the
// migration Job has no use for the auth secret): each key must be read by at
// least one subcommand it reaches.
func TestFlagsAndVariablesExist(t *testing.T) {
	bin := buildKeepwatch(t)
	helps := map[string]*help{}
	us, sharedKeys := usages(t)
	readBy := map[string]bool{} // "Secret/name KEY" read by some consumer
	for _, u := range us {
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
		for _, src := range u.shared {
			for _, k := range sharedKeys[src] {
				readBy[src+" "+k] = readBy[src+" "+k] || h.vars[k]
			}
		}
	}
	for src, keys := range sharedKeys {
		for _, k := range keys {
			if consumed, ok := readBy[src+" "+k]; ok && !consumed {
				t.Errorf("%s holds %s, which no keepwatch subcommand that reads %s uses", src, k, src)
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
