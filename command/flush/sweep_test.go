package flush_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepwatch/keepwatch"
	"github.com/keepwatch/keepwatch/command/flush"
	"github.com/keepwatch/keepwatch/storage/mongo"
)

// TestRetentionSweepRemovesExpiredInBoundedBatches: documents past their
// retention go, a sweep at a time within its bound, and the metric counts
// them; documents within it stay.
func TestRetentionSweepRemovesExpiredInBoundedBatches(t *testing.T) {
	e := newEnv(t, nil, mongo.Options{})
	ctx := context.Background()
	store := e.store.WithRetention(time.Hour)
	now := time.Now()
	var ps []keepwatch.Progress
	for i := range 7 {
		ps = append(ps, keepwatch.Progress{UserID: "u", VideoID: string(rune('a' + i)), State: st(now.Add(-2*time.Hour).UnixMilli(), 10)})
	}
	ps = append(ps, keepwatch.Progress{UserID: "u", VideoID: "recent", State: st(now.Add(-time.Minute).UnixMilli(), 10)})
	if _, err := store.WriteProgress(ctx, ps); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	sw, err := flush.NewSweeper(store, flush.SweepConfig{Interval: time.Hour, Batch: 2, MaxPerSweep: 5}, slog.New(slog.DiscardHandler), reg)
	if err != nil {
		t.Fatal(err)
	}
	if removed, _, err := sw.SweepOnce(ctx); err != nil || removed != 5 {
		t.Fatalf("first sweep removed %d, %v; want its bound, 5", removed, err)
	}
	if removed, _, err := sw.SweepOnce(ctx); err != nil || removed != 2 {
		t.Fatalf("second sweep removed %d, %v; want the 2 left", removed, err)
	}
	if got := e.stored(); len(got) != 1 {
		t.Fatalf("left %v, want the recent document alone", got)
	}
	if v := counter(t, reg, "keepwatch_retention_removed_total"); v != 7 {
		t.Fatalf("keepwatch_retention_removed_total = %v, want 7", v)
	}
	if _, err := flush.NewSweeper(store, flush.SweepConfig{Batch: 10, MaxPerSweep: 5}, slog.New(slog.DiscardHandler), prometheus.NewRegistry()); err == nil {
		t.Fatal("a batch above the sweep's bound was accepted")
	}
}
