package fleet

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// The keepwatch metrics the report reads.
const (
	mAccepted   = "keepwatch_events_accepted_total"
	mRejected   = "keepwatch_events_rejected_total"
	mPending    = "keepwatch_buffer_pending_entries"
	mOldestAge  = "keepwatch_buffer_oldest_pending_age_seconds"
	mWritten    = "keepwatch_flush_written_total"
	mStale      = "keepwatch_flush_stale_total"
	mDeadLetter = "keepwatch_flush_dead_lettered_total"
)

// Metrics is one scrape: each metric name with its samples summed over
// labels (enough for totals; the report needs no label breakdown).
type Metrics map[string]float64

// Has reports whether the scrape had the metric.
func (m Metrics) Has(name string) bool { _, ok := m[name]; return ok }

// ParseMetrics reads the Prometheus text exposition format.
func ParseMetrics(r io.Reader) (Metrics, error) {
	m := Metrics{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest := line, ""
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name, rest = line[:i], line[i:]
		}
		if strings.HasPrefix(rest, "{") {
			// Label values may hold spaces or braces inside quotes.
			j, inQuote := 1, false
			for ; j < len(rest); j++ {
				c := rest[j]
				if c == '\\' && inQuote {
					j++
					continue
				}
				if c == '"' {
					inQuote = !inQuote
				}
				if c == '}' && !inQuote {
					break
				}
			}
			if j >= len(rest) {
				return nil, fmt.Errorf("parse metrics line %q: unclosed labels", line)
			}
			rest = rest[j+1:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return nil, fmt.Errorf("parse metrics line %q: no value", line)
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return nil, fmt.Errorf("parse metrics line %q: %w", line, err)
		}
		m[name] += v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read metrics: %w", err)
	}
	return m, nil
}

// Scrape fetches and parses url (a /metrics endpoint).
func Scrape(ctx context.Context, c *http.Client, url string) (Metrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: status %d", url, resp.StatusCode)
	}
	return ParseMetrics(resp.Body)
}

// ScrapeAll merges the scrapes of several endpoints (command and query
// services), summing what both expose.
func ScrapeAll(ctx context.Context, c *http.Client, urls []string) (Metrics, error) {
	out := Metrics{}
	for _, u := range urls {
		m, err := Scrape(ctx, c, u)
		if err != nil {
			return nil, err
		}
		for k, v := range m {
			// Gauges of the shared buffer are the same from every service:
			// keep the largest instead of adding them up.
			if k == mPending || k == mOldestAge {
				out[k] = max(out[k], v)
				continue
			}
			out[k] += v
		}
	}
	return out, nil
}

// RedisMemory returns used_memory from INFO memory.
func RedisMemory(ctx context.Context, c *redis.Client) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	info, err := c.Info(ctx, "memory").Result()
	if err != nil {
		return 0, fmt.Errorf("redis INFO memory: %w", err)
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse used_memory %q: %w", v, err)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("redis INFO memory has no used_memory")
}
