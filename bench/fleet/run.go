package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/keepwatch/keepwatch/bench/proc"
	"github.com/keepwatch/keepwatch/bench/token"
	"github.com/redis/go-redis/v9"
	"github.com/valyala/fasthttp"
)

// Target is where a run sends its load and where it reads its figures.
type Target struct {
	Name string
	// CommandURL takes the players' writes.
	CommandURL string
	// QueryURL serves the frontends' reads and the freshness probes; empty
	// when the target has no query side (reads are then not sent).
	QueryURL string
	// MetricsURLs are keepwatch /metrics endpoints (none for baselines).
	MetricsURLs []string
	// RedisURL is read with INFO for memory per pending entry (optional).
	RedisURL string
	// Procs are the processes whose CPU and memory are reported.
	Procs map[string]int
}

// Config is one run at one rate.
type Config struct {
	Target   Target
	Rate     float64
	Period   time.Duration
	Duration time.Duration
	// Workers bounds the requests in flight (and the connections).
	Workers int
	// Timeout bounds one request; a slower one is an error.
	Timeout time.Duration
	// FreshnessPerSecond is how many acknowledged posts per second are
	// followed until the query API shows them (0: none).
	FreshnessPerSecond float64
	// Progress receives a live progress line each second (nil: quiet).
	Progress io.Writer
	// Label prefixes the progress line.
	Label string
	// Warmup is sent first, on the same schedule, and not measured: it opens
	// connections and fills the server's caches. Its errors still count.
	Warmup time.Duration
}

// Fleet is the players and their tokens; it lives across the runs of a step
// search or a comparison so each player keeps its state and token.
type Fleet struct {
	secret    string
	behaviour Behaviour
	players   []*player
	tokens    []string
	users     []string
}

// NewFleet returns an empty fleet whose tokens are signed with secret.
func NewFleet(secret string, b Behaviour) *Fleet {
	return &Fleet{secret: secret, behaviour: b}
}

// ensure grows the fleet to n players.
func (f *Fleet) ensure(n int) error {
	for i := len(f.players); i < n; i++ {
		user := fmt.Sprintf("fleet-user-%d", i)
		tok, err := token.Mint(f.secret, user, 24*time.Hour)
		if err != nil {
			return err
		}
		f.players = append(f.players, newPlayer(i, f.behaviour))
		f.tokens = append(f.tokens, tok)
		f.users = append(f.users, user)
	}
	return nil
}

type job struct {
	due    time.Time
	act    Action
	skewMS int64
	probe  bool
	warm   bool // part of the warm-up: errors count, latency does not
}

type probe struct {
	player  int
	video   string
	percent float64
	acked   time.Time
}

// worker owns its histograms and counters; they are merged at the end.
type worker struct {
	hists [numKinds]*hdrhistogram.Histogram
	// errs counts failures by status code, or "socket" for transport errors
	// and timeouts.
	errs map[string]int64
	body []byte
}

// secondBucket is one second of the run, by completion time.
type secondBucket struct {
	ok, errs int64
	hist     *hdrhistogram.Histogram
}

type series struct {
	mu      sync.Mutex
	start   time.Time
	buckets []*secondBucket
}

func (s *series) record(at time.Time, lat time.Duration, ok bool) {
	i := int(at.Sub(s.start) / time.Second)
	if i < 0 {
		i = 0
	}
	s.mu.Lock()
	for len(s.buckets) <= i {
		s.buckets = append(s.buckets, &secondBucket{hist: hdrhistogram.New(histMin, histMax, 2)})
	}
	b := s.buckets[i]
	if ok {
		b.ok++
		us := min(max(lat.Microseconds(), histMin), histMax)
		_ = b.hist.RecordValue(us)
	} else {
		b.errs++
	}
	s.mu.Unlock()
}

// lastP99 is the p99 of the last complete second, for the progress line.
func (s *series) lastP99(now time.Time) (float64, int64) {
	i := int(now.Sub(s.start)/time.Second) - 1
	s.mu.Lock()
	defer s.mu.Unlock()
	if i < 0 || i >= len(s.buckets) {
		return 0, 0
	}
	return usToMS(s.buckets[i].hist.ValueAtQuantile(99)), s.buckets[i].ok + s.buckets[i].errs
}

// Run sends the fleet's load to cfg.Target at cfg.Rate for cfg.Duration and
// measures it. The run stops by itself: after its slots are sent, or at the
// latest at Duration + 2×Timeout + 5 s, when unsent slots count as errors.
func Run(ctx context.Context, f *Fleet, cfg Config) (*RunReport, error) {
	if cfg.Rate <= 0 || cfg.Duration <= 0 {
		return nil, fmt.Errorf("run needs a positive rate and duration (got %v, %v)", cfg.Rate, cfg.Duration)
	}
	cfg.Workers = max(cfg.Workers, 1)
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	sched := NewSchedule(cfg.Rate, cfg.Period)
	if err := f.ensure(sched.Players); err != nil {
		return nil, err
	}
	cmdClient, err := hostClient(cfg.Target.CommandURL, cfg.Workers, cfg.Timeout)
	if err != nil {
		return nil, err
	}
	var queryClient *fasthttp.HostClient
	if cfg.Target.QueryURL != "" {
		if queryClient, err = hostClient(cfg.Target.QueryURL, cfg.Workers+16, cfg.Timeout); err != nil {
			return nil, err
		}
	}
	var rdb *redis.Client
	if cfg.Target.RedisURL != "" {
		opt, err := redis.ParseURL(cfg.Target.RedisURL)
		if err != nil {
			return nil, fmt.Errorf("parse redis url: %w", err)
		}
		rdb = redis.NewClient(opt)
		defer rdb.Close()
	}
	httpc := &http.Client{Timeout: 5 * time.Second}
	smp := &sampler{target: cfg.Target, httpc: httpc, rdb: rdb}
	if err := smp.begin(ctx); err != nil {
		return nil, err
	}

	jobs := make(chan job, cfg.Workers*4)
	probes := make(chan probe, 256)
	start := time.Now().Add(50 * time.Millisecond)
	measureFrom := start.Add(cfg.Warmup)
	ser := &series{start: measureFrom}
	workers := make([]*worker, cfg.Workers)
	var sent, done atomic.Int64
	var wg sync.WaitGroup
	for i := range workers {
		w := &worker{errs: map[string]int64{}}
		for k := range w.hists {
			w.hists[k] = NewHist()
		}
		workers[i] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			for j := range jobs {
				w.send(cmdClient, queryClient, cfg, f, j, req, resp, ser, probes)
				done.Add(1)
			}
		}()
	}
	fresh := &freshness{hist: NewHist()}
	var pwg sync.WaitGroup
	if queryClient != nil && cfg.FreshnessPerSecond > 0 {
		for range 4 {
			pwg.Add(1)
			go func() {
				defer pwg.Done()
				fresh.run(queryClient, cfg, f, probes)
			}()
		}
	}

	// The sampler reads metrics and prints the progress line each second.
	sampCtx, stopSamp := context.WithCancel(ctx)
	sampDone := make(chan struct{})
	go func() {
		defer close(sampDone)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-sampCtx.Done():
				return
			case now := <-t.C:
				smp.sample(sampCtx, now.Sub(measureFrom))
				if cfg.Progress != nil {
					p99, n := ser.lastP99(now)
					fmt.Fprintf(cfg.Progress, "\r%s %4.0fs/%.0fs  sent %d  done %d  last 1s: %d req p99 %.2fms  errors %d  pending %.0f lag %.1fs   ",
						cfg.Label, now.Sub(measureFrom).Seconds(), cfg.Duration.Seconds(), sent.Load(), done.Load(), n, p99,
						ser.errors(), smp.lastPending(), smp.lastLag())
				}
			}
		}
	}()

	// The dispatcher: slots go out at their scheduled time, whatever is
	// still in flight. A full queue delays sending, never the schedule the
	// latency is measured from.
	slots := sched.Slots(cfg.Warmup + cfg.Duration)
	hardStop := start.Add(cfg.Warmup + cfg.Duration + 2*cfg.Timeout + 5*time.Second)
	sampleEvery := int64(0)
	if cfg.FreshnessPerSecond > 0 {
		sampleEvery = max(int64(cfg.Rate/cfg.FreshnessPerSecond), 1)
	}
	var unsent, idle int64
	var kinds [numKinds]int64
	n := int64(0)
	measured := cfg.Warmup <= 0
dispatch:
	for n < slots {
		now := time.Now()
		if ctx.Err() != nil || now.After(hardStop) {
			break
		}
		due := min(sched.DueBy(now.Sub(start)), slots)
		if due <= n {
			time.Sleep(min(start.Add(sched.Due(n)).Sub(now), 2*time.Millisecond))
			continue
		}
		for ; n < due; n++ {
			pl, _ := sched.Player(n)
			at := start.Add(sched.Due(n))
			act := f.players[pl].tick(f.behaviour, at)
			act.Player = pl
			kinds[act.Kind]++
			if act.Kind == KindIdle || (act.Kind == KindRead && queryClient == nil) {
				idle++
				continue
			}
			warm := at.Before(measureFrom)
			if !warm && !measured {
				measured = true
				smp.measuring()
			}
			j := job{due: at, act: act, skewMS: f.players[pl].skewMS, warm: warm,
				probe: !warm && act.Kind == KindPost && sampleEvery > 0 && n%sampleEvery == 0}
			select {
			case jobs <- j:
				sent.Add(1)
			case <-ctx.Done():
				break dispatch
			case <-time.After(time.Until(hardStop)):
				break dispatch
			}
		}
	}
	unsent = slots - n
	close(jobs)
	wg.Wait()
	close(probes)
	pwg.Wait()
	elapsed := time.Since(measureFrom)
	stopSamp()
	<-sampDone
	if cfg.Progress != nil {
		fmt.Fprintln(cfg.Progress)
	}
	smp.sample(ctx, elapsed)
	return buildRun(cfg, sched, workers, ser, fresh, smp, elapsed, sent.Load(), unsent, idle, kinds), nil
}

func hostClient(base string, conns int, timeout time.Duration) (*fasthttp.HostClient, error) {
	u, err := url.Parse(base)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("parse target url %q: %v", base, err)
	}
	return &fasthttp.HostClient{Addr: u.Host, MaxConns: conns, ReadTimeout: timeout, WriteTimeout: timeout,
		MaxIdleConnDuration: time.Minute, NoDefaultUserAgentHeader: true}, nil
}

// errors counts the failed requests so far, for the progress line.
func (s *series) errors() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for _, b := range s.buckets {
		n += b.errs
	}
	return n
}

func appendEvent(b []byte, ev Event) []byte {
	b = append(b, `{"video_id":"`...)
	b = append(b, ev.VideoID...)
	b = append(b, `","percent":`...)
	b = strconv.AppendFloat(b, ev.Percent, 'f', -1, 64)
	b = append(b, `,"position":`...)
	b = strconv.AppendFloat(b, ev.Position, 'f', -1, 64)
	b = append(b, `,"duration":`...)
	b = strconv.AppendFloat(b, ev.Duration, 'f', -1, 64)
	b = append(b, `,"ts":`...)
	b = strconv.AppendInt(b, ev.TS, 10)
	return b
}

// send performs one job and records it.
func (w *worker) send(cmd, query *fasthttp.HostClient, cfg Config, f *Fleet, j job, req *fasthttp.Request,
	resp *fasthttp.Response, ser *series, probes chan<- probe) {
	req.Reset()
	resp.Reset()
	client, want := cmd, fasthttp.StatusAccepted
	sentAt := time.Now().UnixMilli() + j.skewMS
	req.Header.Set(fasthttp.HeaderAuthorization, "Bearer "+f.tokens[j.act.Player])
	switch j.act.Kind {
	case KindPost:
		req.Header.SetMethod(fasthttp.MethodPost)
		req.SetRequestURI(cfg.Target.CommandURL + "/v1/progress")
		req.Header.SetContentType("application/json")
		b := appendEvent(w.body[:0], j.act.Event)
		b = append(b, `,"sent_at":`...)
		b = strconv.AppendInt(b, sentAt, 10)
		w.body = append(b, '}')
		req.SetBodyRaw(w.body)
	case KindBatch:
		req.Header.SetMethod(fasthttp.MethodPost)
		req.SetRequestURI(cfg.Target.CommandURL + "/v1/progress/batch")
		req.Header.SetContentType("application/json")
		b := append(w.body[:0], `{"sent_at":`...)
		b = strconv.AppendInt(b, sentAt, 10)
		b = append(b, `,"events":[`...)
		for i, ev := range j.act.Batch {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(appendEvent(b, ev), '}')
		}
		w.body = append(b, "]}"...)
		req.SetBodyRaw(w.body)
	case KindDelete:
		req.Header.SetMethod(fasthttp.MethodDelete)
		req.SetRequestURI(cfg.Target.CommandURL + "/v1/progress/" + j.act.Event.VideoID)
	case KindRead:
		client, want = query, fasthttp.StatusOK
		req.Header.SetMethod(fasthttp.MethodGet)
		req.SetRequestURI(cfg.Target.QueryURL + "/v1/keep-watching?limit=20")
	}
	err := client.DoTimeout(req, resp, cfg.Timeout)
	now := time.Now()
	lat := now.Sub(j.due)
	if err != nil {
		w.errs["socket"]++
		ser.record(now, lat, false)
		return
	}
	if code := resp.StatusCode(); code != want {
		w.errs[strconv.Itoa(code)]++
		ser.record(now, lat, false)
		return
	}
	if !j.warm {
		Record(w.hists[j.act.Kind], lat)
		ser.record(now, lat, true)
	}
	if j.probe {
		select {
		case probes <- probe{player: j.act.Player, video: j.act.Event.VideoID, percent: j.act.Event.Percent, acked: now}:
		default: // probers busy: skip this sample rather than slow the load
		}
	}
}

// freshness follows acknowledged posts until the query API shows them.
type freshness struct {
	mu       sync.Mutex
	hist     *hdrhistogram.Histogram
	timeouts int64
}

func (fr *freshness) run(c *fasthttp.HostClient, cfg Config, f *Fleet, probes <-chan probe) {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	limit := 10 * time.Second
	for p := range probes {
		seen := false
		for deadline := p.acked.Add(limit); time.Now().Before(deadline); {
			req.Reset()
			resp.Reset()
			req.Header.SetMethod(fasthttp.MethodGet)
			req.SetRequestURI(cfg.Target.QueryURL + "/v1/progress/" + p.video)
			req.Header.Set(fasthttp.HeaderAuthorization, "Bearer "+f.tokens[p.player])
			if err := c.DoTimeout(req, resp, cfg.Timeout); err == nil && resp.StatusCode() == fasthttp.StatusOK {
				var it struct {
					Percent float64 `json:"percent"`
				}
				if json.Unmarshal(resp.Body(), &it) == nil && it.Percent >= p.percent-0.0005 {
					seen = true
					break
				}
			}
			time.Sleep(time.Millisecond)
		}
		fr.mu.Lock()
		if seen {
			Record(fr.hist, time.Since(p.acked))
		} else {
			fr.timeouts++
		}
		fr.mu.Unlock()
	}
}

// sampler reads the target's metrics, Redis memory and process usage.
type sampler struct {
	target  Target
	httpc   *http.Client
	rdb     *redis.Client
	mu      sync.Mutex
	first   Metrics
	last    Metrics
	memBase int64
	points  []SamplePoint
	usage0  map[string]proc.Usage
	t0      time.Time
	errs    []string
}

func (s *sampler) begin(ctx context.Context) error {
	s.t0 = time.Now()
	if len(s.target.MetricsURLs) > 0 {
		m, err := ScrapeAll(ctx, s.httpc, s.target.MetricsURLs)
		if err != nil {
			return err
		}
		s.first, s.last = m, m
	}
	if s.rdb != nil {
		mem, err := RedisMemory(ctx, s.rdb)
		if err != nil {
			return err
		}
		// Memory of entries already pending (from earlier runs) is part of
		// the baseline's pending count: take it out proportionally later.
		s.memBase = mem
	}
	s.usage0 = map[string]proc.Usage{}
	for name, pid := range s.target.Procs {
		if u, err := proc.ReadUsage(pid); err == nil {
			s.usage0[name] = u
		}
	}
	return nil
}

// measuring resets the CPU baseline when the warm-up ends, so CPU per
// request counts the measured requests' CPU only.
func (s *sampler) measuring() {
	u0 := map[string]proc.Usage{}
	for name, pid := range s.target.Procs {
		if u, err := proc.ReadUsage(pid); err == nil {
			u0[name] = u
		}
	}
	s.mu.Lock()
	s.usage0 = u0
	s.mu.Unlock()
}

func (s *sampler) sample(ctx context.Context, t time.Duration) {
	p := SamplePoint{T: t.Seconds()}
	if len(s.target.MetricsURLs) > 0 {
		if m, err := ScrapeAll(ctx, s.httpc, s.target.MetricsURLs); err == nil {
			s.mu.Lock()
			s.last = m
			s.mu.Unlock()
			p.Pending, p.OldestAgeS, p.Accepted = m[mPending], m[mOldestAge], m[mAccepted]-s.first[mAccepted]
		} else if len(s.errs) < 5 {
			s.errs = append(s.errs, err.Error())
		}
	}
	if s.rdb != nil {
		if mem, err := RedisMemory(ctx, s.rdb); err == nil {
			p.RedisUsedMemory = mem
		}
	}
	s.mu.Lock()
	u0 := s.usage0
	s.mu.Unlock()
	for name, pid := range s.target.Procs {
		if u, err := proc.ReadUsage(pid); err == nil {
			p.Procs = append(p.Procs, ProcPoint{Name: name, CPUSeconds: (u.CPU - u0[name].CPU).Seconds(), RSS: u.RSS})
		}
	}
	s.mu.Lock()
	s.points = append(s.points, p)
	s.mu.Unlock()
}

func (s *sampler) lastPending() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last[mPending]
}

func (s *sampler) lastLag() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last[mOldestAge]
}

// buildRun turns what a run collected into its report.
func buildRun(cfg Config, sched Schedule, ws []*worker, ser *series, fr *freshness, smp *sampler,
	elapsed time.Duration, sent, unsent, idle int64, kinds [numKinds]int64) *RunReport {
	r := &RunReport{
		Target: cfg.Target.Name, ScheduledRate: cfg.Rate, Players: sched.Players, PeriodS: sched.Period().Seconds(),
		DurationS: cfg.Duration.Seconds(), ElapsedS: elapsed.Seconds(), Sent: sent, Idle: idle,
		Errors: map[string]int64{}, ByKind: map[string]Summary{}, Slots: map[string]int64{},
	}
	for k := Kind(0); k < numKinds; k++ {
		r.Slots[k.String()] = kinds[k]
	}
	var all []*hdrhistogram.Histogram
	for k := Kind(0); k < KindIdle; k++ {
		var parts []*hdrhistogram.Histogram
		for _, w := range ws {
			parts = append(parts, w.hists[k])
		}
		h, _ := Merge(parts...)
		if h.TotalCount() > 0 {
			r.ByKind[k.String()] = Summarize(h)
		}
		all = append(all, h)
	}
	writes, _ := Merge(all[KindPost], all[KindBatch], all[KindDelete])
	merged, _ := Merge(all...)
	r.Latency = Summarize(merged)
	r.WriteLatency = Summarize(writes)
	r.Curve = Curve(merged)
	for _, w := range ws {
		for k, c := range w.errs {
			r.Errors[k] += c
			r.ErrorsTotal += c
		}
	}
	r.OK = merged.TotalCount()
	if unsent > 0 {
		r.Errors["unsent"] = unsent
		r.ErrorsTotal += unsent
	}
	r.AchievedRate = float64(r.OK) / cfg.Duration.Seconds()
	if elapsed > cfg.Duration {
		r.AchievedRate = float64(r.OK) / elapsed.Seconds()
	}
	ser.mu.Lock()
	for i, b := range ser.buckets {
		r.Series = append(r.Series, SecondPoint{T: float64(i), OK: b.ok, Errors: b.errs,
			P50MS: usToMS(b.hist.ValueAtQuantile(50)), P99MS: usToMS(b.hist.ValueAtQuantile(99))})
	}
	ser.mu.Unlock()
	fr.mu.Lock()
	if fr.hist.TotalCount() > 0 || fr.timeouts > 0 {
		s := Summarize(fr.hist)
		r.Freshness = &s
		r.FreshnessTimeouts = fr.timeouts
	}
	fr.mu.Unlock()

	smp.mu.Lock()
	defer smp.mu.Unlock()
	r.Samples = smp.points
	r.ScrapeErrors = smp.errs
	if len(cfg.Target.MetricsURLs) > 0 && smp.last != nil {
		m0, m1 := smp.first, smp.last
		acc := m1[mAccepted] - m0[mAccepted]
		r.EventsAccepted = &acc
		lagMax, lagLast := 0.0, m1[mOldestAge]
		for _, p := range smp.points {
			lagMax = max(lagMax, p.OldestAgeS)
		}
		r.FlushLagMaxS, r.FlushLagLastS = &lagMax, &lagLast
		if m1.Has(mWritten) && acc > 0 {
			wpe := (m1[mWritten] - m0[mWritten] + m1[mStale] - m0[mStale]) / acc
			r.WritesPerEvent = &wpe
			dl := m1[mDeadLetter] - m0[mDeadLetter]
			r.DeadLettered = &dl
		}
		if smp.rdb != nil {
			// Bytes per entry at the sample with the most entries pending.
			best := SamplePoint{}
			for _, p := range smp.points {
				if p.Pending > best.Pending && p.RedisUsedMemory > 0 {
					best = p
				}
			}
			pending0 := m0[mPending]
			if d := best.Pending - pending0; d > 0 {
				b := float64(best.RedisUsedMemory-smp.memBase) / d
				r.BytesPerPendingEntry = &b
			}
		}
	}
	for name := range cfg.Target.Procs {
		var last ProcPoint
		var rssMax int64
		for _, p := range smp.points {
			for _, pp := range p.Procs {
				if pp.Name == name {
					last = pp
					rssMax = max(rssMax, pp.RSS)
				}
			}
		}
		pu := ProcUsage{Name: name, CPUCores: last.CPUSeconds / elapsed.Seconds(), RSSMaxBytes: rssMax}
		if r.OK > 0 {
			pu.CPUPerRequestUS = last.CPUSeconds * 1e6 / float64(r.OK)
		}
		r.Processes = append(r.Processes, pu)
	}
	if math.IsNaN(r.AchievedRate) {
		r.AchievedRate = 0
	}
	return r
}
