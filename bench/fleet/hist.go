package fleet

import (
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Latencies are recorded in microseconds from 1 µs to 5 minutes with three
// significant digits: 0.1% resolution everywhere on the curve.
const (
	histMin    = 1
	histMax    = int64(5 * time.Minute / time.Microsecond)
	histDigits = 3
)

// Hist is a latency histogram in microseconds.
type Hist = hdrhistogram.Histogram

// NewHist returns an empty latency histogram in microseconds.
func NewHist() *hdrhistogram.Histogram {
	return hdrhistogram.New(histMin, histMax, histDigits)
}

// Record adds d, clamped into the histogram's range.
func Record(h *hdrhistogram.Histogram, d time.Duration) {
	us := min(max(d.Microseconds(), histMin), h.HighestTrackableValue())
	_ = h.RecordValue(us) // in range by construction
}

// Merge adds every histogram of parts into one new histogram. Values the
// destination cannot hold are counted in dropped (none, with equal ranges).
func Merge(parts ...*hdrhistogram.Histogram) (merged *hdrhistogram.Histogram, dropped int64) {
	merged = NewHist()
	for _, p := range parts {
		if p != nil {
			dropped += merged.Merge(p)
		}
	}
	return merged, dropped
}

// Summary is a latency distribution in milliseconds.
type Summary struct {
	Count  int64   `json:"count"`
	MeanMS float64 `json:"mean_ms"`
	P50MS  float64 `json:"p50_ms"`
	P90MS  float64 `json:"p90_ms"`
	P99MS  float64 `json:"p99_ms"`
	P999MS float64 `json:"p999_ms"`
	MaxMS  float64 `json:"max_ms"`
}

func usToMS(v int64) float64 { return float64(v) / 1000 }

// Summarize reads the usual percentiles off h.
func Summarize(h *hdrhistogram.Histogram) Summary {
	if h == nil || h.TotalCount() == 0 {
		return Summary{}
	}
	return Summary{
		Count:  h.TotalCount(),
		MeanMS: h.Mean() / 1000,
		P50MS:  usToMS(h.ValueAtQuantile(50)),
		P90MS:  usToMS(h.ValueAtQuantile(90)),
		P99MS:  usToMS(h.ValueAtQuantile(99)),
		P999MS: usToMS(h.ValueAtQuantile(99.9)),
		MaxMS:  usToMS(h.Max()),
	}
}

// CurvePoint is one point of a latency percentile curve.
type CurvePoint struct {
	Percentile float64 `json:"percentile"`
	MS         float64 `json:"ms"`
}

// curvePercentiles sample the curve more densely towards the tail, where the
// interesting part of a latency distribution is.
var curvePercentiles = []float64{0, 10, 20, 30, 40, 50, 60, 70, 75, 80, 85, 90, 92.5, 95, 96.25, 97.5, 98.4375,
	99, 99.2188, 99.5, 99.6094, 99.75, 99.8047, 99.9, 99.9023, 99.95, 99.99, 99.999, 100}

// Curve returns the latency percentile curve of h.
func Curve(h *hdrhistogram.Histogram) []CurvePoint {
	if h == nil || h.TotalCount() == 0 {
		return nil
	}
	out := make([]CurvePoint, 0, len(curvePercentiles))
	for _, p := range curvePercentiles {
		v := h.ValueAtQuantile(p)
		if p == 100 {
			v = h.Max()
		}
		out = append(out, CurvePoint{Percentile: p, MS: usToMS(v)})
	}
	return out
}
