//go:build !nodev

package main

import (
	"context"
	"errors"
	"os/exec"
	"syscall"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/keepwatch/keepwatch"
	"github.com/keepwatch/keepwatch/storage/redisbuf"
)

func TestSecretSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	s1, created, err := loadOrCreateSecret(dir)
	if err != nil || !created || len(s1) != 64 {
		t.Fatalf("first: %q created=%v err=%v", s1, created, err)
	}
	s2, created, err := loadOrCreateSecret(dir)
	if err != nil || created || s2 != s1 {
		t.Fatalf("second: %q created=%v err=%v, want %q", s2, created, err, s1)
	}
}

// useBuffer stores a pending entry through the real buffer (its Lua scripts
// included) and returns what the buffer holds for the user afterwards.
func useBuffer(t *testing.T, url string, write bool) []keepwatch.Progress {
	t.Helper()
	o, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(o)
	defer c.Close()
	buf, err := redisbuf.New(c, redisbuf.Options{Shards: 4})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if write {
		st := keepwatch.State{EventTime: 1732240000000, Percent: 42.5, Position: 1234.5, Duration: 2700}
		perWrite, err := buf.Apply(ctx, []keepwatch.Write{{UserID: "alice", Entries: []keepwatch.Entry{{VideoID: "v1", State: st}}}})
		if err != nil || perWrite[0] != nil {
			t.Fatalf("apply: %v %v", err, perWrite)
		}
	}
	got, err := buf.Pending(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func checkPending(t *testing.T, got []keepwatch.Progress) {
	t.Helper()
	if len(got) != 1 || got[0].VideoID != "v1" || got[0].Percent != 42.5 {
		t.Fatalf("pending after restart: %+v", got)
	}
}

func TestRedisServerChildKeepsDataAcrossRestart(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatal("redis-server is not on PATH: install it (Debian: apt-get install redis-server); .ci/run does")
	}
	dir := t.TempDir()
	r, err := startDevRedis(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if r.Embedded || r.PID == 0 {
		t.Fatalf("want a redis-server child, got %+v", r)
	}
	useBuffer(t, r.URL, true)
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(r.PID, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("redis-server pid %d still exists after Stop (kill 0: %v)", r.PID, err)
	}
	r, err = startDevRedis(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop()
	checkPending(t, useBuffer(t, r.URL, false))
}

func TestEmbeddedRedisRunsTheBufferAndKeepsDataAcrossCleanRestart(t *testing.T) {
	dir := t.TempDir()
	r, err := startEmbedded(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Embedded {
		t.Fatal("want embedded")
	}
	useBuffer(t, r.URL, true)
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	r, err = startEmbedded(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop()
	checkPending(t, useBuffer(t, r.URL, false))
}
