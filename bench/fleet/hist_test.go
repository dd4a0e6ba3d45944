package fleet

import (
	"testing"
	"time"
)

func TestMergeEqualsOneHistogram(t *testing.T) {
	all := NewHist()
	parts := []*Hist{NewHist(), NewHist(), NewHist(), nil}
	for i := 1; i <= 30000; i++ {
		d := time.Duration(i*i%977+1) * 13 * time.Microsecond
		Record(all, d)
		Record(parts[i%3], d)
	}
	merged, dropped := Merge(parts...)
	if dropped != 0 {
		t.Fatalf("dropped %d values", dropped)
	}
	if merged.TotalCount() != all.TotalCount() {
		t.Fatalf("count %d, want %d", merged.TotalCount(), all.TotalCount())
	}
	for _, q := range []float64{0, 50, 90, 99, 99.9, 100} {
		if a, b := merged.ValueAtQuantile(q), all.ValueAtQuantile(q); a != b {
			t.Errorf("p%v: merged %d, single %d", q, a, b)
		}
	}
	if merged.Max() != all.Max() || merged.Min() != all.Min() {
		t.Errorf("min/max %d/%d, want %d/%d", merged.Min(), merged.Max(), all.Min(), all.Max())
	}
	s := Summarize(merged)
	if !(s.P50MS <= s.P90MS && s.P90MS <= s.P99MS && s.P99MS <= s.P999MS && s.P999MS <= s.MaxMS) {
		t.Errorf("percentiles out of order: %+v", s)
	}
	c := Curve(merged)
	for i := 1; i < len(c); i++ {
		if c[i].MS < c[i-1].MS || c[i].Percentile <= c[i-1].Percentile {
			t.Fatalf("curve not monotone at %d: %+v %+v", i, c[i-1], c[i])
		}
	}
}

func TestRecordClampsOutOfRange(t *testing.T) {
	h := NewHist()
	Record(h, 0)
	Record(h, time.Hour)
	if h.TotalCount() != 2 {
		t.Fatalf("count %d, want 2: out-of-range values must be clamped, not lost", h.TotalCount())
	}
	if got := time.Duration(h.Max()) * time.Microsecond; got < 4*time.Minute {
		t.Errorf("max %v, want the top of the range", got)
	}
}
