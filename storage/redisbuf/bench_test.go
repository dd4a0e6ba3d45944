package redisbuf_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keepwatch/keepwatch"
	"github.com/keepwatch/keepwatch/internal/testenv"
	"github.com/keepwatch/keepwatch/storage/redisbuf"
)

// BenchmarkApply applies group commits shaped like the command API's under
// load (batch single-event writes of distinct users, over users × 4 videos
// already pending) and reports the Redis CPU each event costs, read from
// INFO cpu, and the part of it spent inside the apply script, read from INFO
// commandstats (steadier: it leaves out the event loop and the network). In
// kwbench compare Redis shares a core with the load generator,
// so this figure, not the client's ns/op, is what bounds the command side.
func BenchmarkApply(b *testing.B) {
	r := testenv.StartRedis(b)
	c := r.Client()
	for _, shards := range []int{1, 4, 16} {
		for _, batch := range []int{8, 32, 256} {
			b.Run(fmt.Sprintf("shards=%d/batch=%d", shards, batch), func(b *testing.B) {
				benchApply(b, c, shards, batch)
			})
		}
	}
}

func benchApply(b *testing.B, c *redis.Client, shards, batch int) {
	ctx := context.Background()
	if err := c.FlushAll(ctx).Err(); err != nil {
		b.Fatal(err)
	}
	buf, err := redisbuf.New(c, redisbuf.Options{Shards: shards})
	if err != nil {
		b.Fatal(err)
	}
	const users, videos = 10000, 4
	t0 := time.Now().UnixMilli()
	writes := make([]keepwatch.Write, batch)
	next := 0
	fill := func(t int64) {
		for i := range writes {
			u := next % users
			next++
			writes[i] = keepwatch.Write{UserID: "user-" + strconv.Itoa(u), Entries: []keepwatch.Entry{{
				VideoID: "video-" + strconv.Itoa(next%videos),
				State:   keepwatch.State{EventTime: t, Percent: 42.5, Position: 1234.5, Duration: 2700, Episode: keepwatch.Unknown},
			}}}
		}
	}
	for i := 0; i < users*videos/batch; i++ {
		fill(t0)
		if _, err := buf.Apply(ctx, writes); err != nil {
			b.Fatal(err)
		}
	}
	if err := c.ConfigResetStat(ctx).Err(); err != nil {
		b.Fatal(err)
	}
	cpu0 := redisCPU(b, c)
	b.ResetTimer()
	for i := range b.N {
		fill(t0 + int64(i) + 1)
		per, err := buf.Apply(ctx, writes)
		if err != nil {
			b.Fatal(err)
		}
		for _, e := range per {
			if e != nil {
				b.Fatal(e)
			}
		}
	}
	b.StopTimer()
	events := float64(b.N * batch)
	b.ReportMetric((redisCPU(b, c)-cpu0).Seconds()*1e6/events, "redis-µs/event")
	b.ReportMetric(scriptMicros(b, c)/events, "script-µs/event")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/events, "ns/event")
}

// redisCPU is the CPU time the server has used (user + system).
func redisCPU(b *testing.B, c *redis.Client) time.Duration {
	info := infoFields(b, c, "cpu")
	var total float64
	for _, k := range []string{"used_cpu_user", "used_cpu_sys"} {
		total += parseInfoFloat(b, k, info[k])
	}
	return time.Duration(total * float64(time.Second))
}

// scriptMicros is the time Redis spent in EVALSHA since the last CONFIG
// RESETSTAT, in µs.
func scriptMicros(b *testing.B, c *redis.Client) float64 {
	// The line is "cmdstat_evalsha:calls=N,usec=N,...".
	for _, kv := range strings.Split(infoFields(b, c, "commandstats")["cmdstat_evalsha"], ",") {
		if v, ok := strings.CutPrefix(kv, "usec="); ok {
			return parseInfoFloat(b, "cmdstat_evalsha usec", v)
		}
	}
	b.Fatal("INFO commandstats has no evalsha usec")
	return 0
}

// infoFields reads one INFO section as its "key:value" lines.
func infoFields(b *testing.B, c *redis.Client, section string) map[string]string {
	info, err := c.Info(context.Background(), section).Result()
	if err != nil {
		b.Fatal(err)
	}
	fields := map[string]string{}
	for _, line := range strings.Split(info, "\r\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			fields[k] = v
		}
	}
	return fields
}

func parseInfoFloat(b *testing.B, name, v string) float64 {
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		b.Fatalf("INFO %s: %v", name, err)
	}
	return f
}
