package main

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/keepwatch/keepwatch/internal/testenv"
)

// runMain runs the binary's Main in-process with the given KEEPWATCH_*
// variables and returns its exit code and output.
func runMain(t *testing.T, ctx context.Context, vars map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	env := &environment{
		stdout: &stdout, stderr: &stderr,
		getenv: func(k string) string { return vars[k] },
		logger: slog.New(slog.NewTextHandler(&stderr, nil)),
	}
	code := Main(ctx, env, args)
	return code, stdout.String(), stderr.String()
}

func TestMigrateUpThenStatus(t *testing.T) {
	ctx := context.Background()
	m := testenv.StartMongo(t)
	vars := map[string]string{"KEEPWATCH_MONGO_URI": m.URI, "KEEPWATCH_MONGO_DB": m.Database}

	code, out, errOut := runMain(t, ctx, vars, "migrate", "status")
	if code != 0 || !strings.Contains(out, "pending") {
		t.Fatalf("status on an empty database: code %d\n%s\n%s", code, out, errOut)
	}
	for i := 0; i < 2; i++ {
		code, out, errOut = runMain(t, ctx, vars, "migrate", "up")
		if code != 0 || strings.Contains(out, "pending") {
			t.Fatalf("up #%d: code %d\n%s\n%s", i+1, code, out, errOut)
		}
	}
	if code, _, _ := runMain(t, ctx, vars, "migrate", "sideways"); code != 2 {
		t.Fatalf("unknown verb: exit code %d, want 2", code)
	}
}

func TestOpenRefusesUnmigratedDatabase(t *testing.T) {
	ctx := context.Background()
	m := testenv.StartMongo(t)
	env := &environment{logger: slog.New(slog.DiscardHandler)}
	mc := mongoConfig{uri: m.URI, db: m.Database, timeout: 10e9}
	if _, err := mc.open(ctx, env, "test", true); err == nil || !strings.Contains(err.Error(), "keepwatch migrate up") ||
		!strings.Contains(err.Error(), "--migrate") {
		t.Fatalf("open on an unmigrated database = %v, want an error naming `keepwatch migrate up` and --migrate", err)
	}
	mc.migrate = true
	store, err := mc.open(ctx, env, "test", true)
	if err != nil {
		t.Fatalf("open with --migrate: %v", err)
	}
	_ = store.Close(ctx)
	mc.migrate = false
	store, err = mc.open(ctx, env, "test", true)
	if err != nil {
		t.Fatalf("open after migrating: %v", err)
	}
	_ = store.Close(ctx)
}
