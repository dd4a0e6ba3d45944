package deploy_test

import (
	"slices"
	"strings"
	"testing"
	"time"
)

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
