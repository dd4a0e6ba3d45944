package fleet

import (
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"math"
	"strings"
)

// palette colours one line or bar per target.
var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"}

// line is one named series of (x, y) points.
type line struct {
	Name   string
	Points [][2]float64
}

// chart draws a line chart as inline SVG. With xNines the x axis is
// percentiles spread as "number of nines" (0, 90, 99, 99.9, …), the usual
// way to show a latency tail.
func chart(title, xLabel, yLabel string, lines []line, xNines bool) template.HTML {
	const w, h, left, right, top, bottom = 640.0, 300.0, 60.0, 150.0, 30.0, 40.0
	tx := func(x float64) float64 {
		if xNines {
			return -math.Log10(max(1-x/100, 1e-6))
		}
		return x
	}
	minX, maxX, maxY := math.Inf(1), math.Inf(-1), 0.0
	for _, l := range lines {
		for _, p := range l.Points {
			minX, maxX, maxY = min(minX, tx(p[0])), max(maxX, tx(p[0])), max(maxY, p[1])
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="11">`, w, h)
	fmt.Fprintf(&b, `<text x="%.0f" y="16" font-size="13" font-weight="bold">%s</text>`, left, template.HTMLEscapeString(title))
	if math.IsInf(minX, 0) {
		b.WriteString(`<text x="60" y="150">no data</text></svg>`)
		return template.HTML(b.String())
	}
	if maxX == minX {
		maxX = minX + 1
	}
	if maxY == 0 {
		maxY = 1
	}
	maxY *= 1.05
	pw, ph := w-left-right, h-top-bottom
	px := func(x float64) float64 { return left + (tx(x)-minX)/(maxX-minX)*pw }
	py := func(y float64) float64 { return top + ph - y/maxY*ph }
	fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" fill="none" stroke="#999"/>`, left, top, pw, ph)
	for i := 0; i <= 4; i++ {
		y := maxY * float64(i) / 4
		fmt.Fprintf(&b, `<line x1="%.0f" x2="%.0f" y1="%.1f" y2="%.1f" stroke="#eee"/><text x="%.0f" y="%.1f" text-anchor="end">%.3g</text>`,
			left, left+pw, py(y), py(y), left-4, py(y)+4, y)
	}
	if xNines {
		for _, p := range []float64{0, 90, 99, 99.9, 99.99, 99.999} {
			if tx(p) <= maxX+1e-9 {
				fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" text-anchor="middle">%g</text>`, px(p), top+ph+14, p)
			}
		}
	} else {
		for i := 0; i <= 4; i++ {
			x := minX + (maxX-minX)*float64(i)/4
			fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" text-anchor="middle">%.3g</text>`, px(x), top+ph+14, x)
		}
	}
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="middle">%s</text>`, left+pw/2, h-6, template.HTMLEscapeString(xLabel))
	fmt.Fprintf(&b, `<text x="12" y="%.0f" transform="rotate(-90 12 %.0f)" text-anchor="middle">%s</text>`, top+ph/2, top+ph/2, template.HTMLEscapeString(yLabel))
	for i, l := range lines {
		c := palette[i%len(palette)]
		pts := make([]string, len(l.Points))
		for j, p := range l.Points {
			pts[j] = fmt.Sprintf("%.1f,%.1f", px(p[0]), py(p[1]))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`, c, strings.Join(pts, " "))
		fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="10" height="10" fill="%s"/><text x="%.0f" y="%.0f">%s</text>`,
			left+pw+10, top+float64(i)*16, c, left+pw+24, top+float64(i)*16+9, template.HTMLEscapeString(l.Name))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// bars draws a horizontal bar chart as inline SVG.
func bars(title, unit string, names []string, values []float64) template.HTML {
	const w, left, barH = 640.0, 120.0, 22.0
	h := 30 + barH*float64(len(names)) + 10
	maxV := 0.0
	for _, v := range values {
		maxV = max(maxV, v)
	}
	if maxV == 0 {
		maxV = 1
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="11">`, w, h)
	fmt.Fprintf(&b, `<text x="%.0f" y="16" font-size="13" font-weight="bold">%s</text>`, left, template.HTMLEscapeString(title))
	for i, n := range names {
		y := 26 + barH*float64(i)
		bw := values[i] / maxV * (w - left - 120)
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="end">%s</text><rect x="%.0f" y="%.0f" width="%.1f" height="%.0f" fill="%s"/><text x="%.1f" y="%.0f">%.4g %s</text>`,
			left-6, y+14, template.HTMLEscapeString(n), left, y+2, bw, barH-6, palette[i%len(palette)], left+bw+6, y+14, values[i], template.HTMLEscapeString(unit))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

var page = template.Must(template.New("report").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>kwbench fleet report</title>
<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}
svg{display:block;margin:1em 0}h2{border-bottom:1px solid #ccc}</style></head><body>
<h1>kwbench fleet report</h1>
<p>{{.R.Mode}} mode, started {{.R.StartedAt.Format "2006-01-02 15:04:05 MST"}}. Machine: {{.R.Machine.CPUs}} CPUs ({{.R.Machine.CPUModel}}), {{.R.Machine.Kernel}}, {{.R.Machine.GoVersion}}; servers on core {{.R.Machine.ServerCore}}, load on core {{.R.Machine.LoadCore}}.</p>
<p>Command: <code>{{.R.Command}}</code></p>
<p>Open model: each request has a scheduled time and is sent then, whether or not earlier ones returned; latency is measured from the scheduled time.</p>
<h2>Summary</h2>
<pre>{{.Text}}</pre>
<h2>Plots</h2>
{{range .Charts}}{{.}}{{end}}
<p>Every figure is also in the JSON report written beside this file.</p>
</body></html>
`))

// WriteHTML writes a self-contained HTML report: inline SVG, no scripts, no
// network.
func WriteHTML(w io.Writer, r *Report) error {
	var text strings.Builder
	if err := WriteText(&text, r); err != nil {
		return err
	}
	var charts []template.HTML
	var curves, tput, p99s, lag, pending []line
	for _, run := range r.Runs {
		var c line
		c.Name = run.Target
		for _, p := range run.Curve {
			c.Points = append(c.Points, [2]float64{p.Percentile, p.MS})
		}
		curves = append(curves, c)
		t := line{Name: run.Target}
		q := line{Name: run.Target}
		for _, s := range run.Series {
			t.Points = append(t.Points, [2]float64{s.T, float64(s.OK)})
			q.Points = append(q.Points, [2]float64{s.T, s.P99MS})
		}
		tput, p99s = append(tput, t), append(p99s, q)
		if run.EventsAccepted != nil {
			l, p := line{Name: run.Target}, line{Name: run.Target}
			for _, s := range run.Samples {
				l.Points = append(l.Points, [2]float64{s.T, s.OldestAgeS})
				p.Points = append(p.Points, [2]float64{s.T, s.Pending})
			}
			lag, pending = append(lag, l), append(pending, p)
		}
	}
	charts = append(charts,
		chart("Latency percentile curve (from scheduled time)", "percentile", "ms", curves, true),
		chart("Throughput over time", "second of run", "successful requests/s", tput, false),
		chart("p99 latency over time", "second of run", "ms", p99s, false))
	if len(lag) > 0 {
		charts = append(charts, chart("Flush lag (oldest pending entry age)", "second of run", "s", lag, false),
			chart("Pending entries in Redis", "second of run", "entries", pending, false))
	}
	if len(r.Comparisons) > 1 {
		var names []string
		var p99, cpu, maxRate []float64
		for _, c := range r.Comparisons {
			names = append(names, c.Target)
			p99, cpu, maxRate = append(p99, c.P99MS), append(cpu, c.CPUPerRequestUS), append(maxRate, c.MaxRate)
		}
		charts = append(charts, bars("p99 latency at the same load", "ms", names, p99),
			bars("Server CPU per request", "µs", names, cpu))
		if r.Steps != nil {
			charts = append(charts, bars("Highest rate with p99 under target and zero errors", "req/s", names, maxRate))
		}
	}
	if len(r.Steps) > 0 {
		var ls []line
		for name, s := range r.Steps {
			l := line{Name: name}
			for _, st := range s.Steps {
				l.Points = append(l.Points, [2]float64{st.ScheduledRate, st.Latency.P99MS})
			}
			sortPoints(l.Points)
			ls = append(ls, l)
		}
		charts = append(charts, chart("Step search: p99 by rate", "scheduled req/s", "p99 ms", ls, false))
	}
	if err := page.Execute(w, map[string]any{"R": r, "Text": text.String(), "Charts": charts}); err != nil {
		return fmt.Errorf("write html report: %w", err)
	}
	return nil
}

func sortPoints(p [][2]float64) {
	for i := 1; i < len(p); i++ {
		for j := i; j > 0 && p[j][0] < p[j-1][0]; j-- {
			p[j], p[j-1] = p[j-1], p[j]
		}
	}
}

// WriteJSON writes every figure of r.
func WriteJSON(w io.Writer, r *Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("write json report: %w", err)
	}
	return nil
}
