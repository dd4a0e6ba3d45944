package fleet

// RunReport is every figure of one run against one target at one rate.
// Pointers are nil when the target does not expose the figure (a baseline
// has no /metrics, a target without query side has no freshness).
type RunReport struct {
	Target        string  `json:"target"`
	ScheduledRate float64 `json:"scheduled_rate"`
	AchievedRate  float64 `json:"achieved_rate"`
	Players       int     `json:"players"`
	PeriodS       float64 `json:"period_s"`
	DurationS     float64 `json:"duration_s"`
	ElapsedS      float64 `json:"elapsed_s"`
	// Slots counts the schedule's slots by what the player did; Idle ones
	// (paused, offline, or reads with no query side) send nothing.
	Slots map[string]int64 `json:"slots"`
	Sent  int64            `json:"sent"`
	Idle  int64            `json:"idle"`
	OK    int64            `json:"ok"`
	// Errors by HTTP status, "socket" (transport errors and timeouts) and
	// "unsent" (slots the run could not send before its hard stop).
	Errors      map[string]int64 `json:"errors"`
	ErrorsTotal int64            `json:"errors_total"`
	// Latency of successful requests from their scheduled time.
	Latency      Summary            `json:"latency"`
	WriteLatency Summary            `json:"write_latency"`
	ByKind       map[string]Summary `json:"latency_by_kind"`
	Curve        []CurvePoint       `json:"latency_curve"`
	// Freshness is POST acknowledged → value visible in the query API.
	Freshness         *Summary `json:"freshness,omitempty"`
	FreshnessTimeouts int64    `json:"freshness_timeouts"`
	// From keepwatch's /metrics and Redis INFO.
	EventsAccepted       *float64 `json:"events_accepted,omitempty"`
	FlushLagMaxS         *float64 `json:"flush_lag_max_s,omitempty"`
	FlushLagLastS        *float64 `json:"flush_lag_last_s,omitempty"`
	WritesPerEvent       *float64 `json:"mongo_writes_per_event,omitempty"`
	DeadLettered         *float64 `json:"dead_lettered,omitempty"`
	BytesPerPendingEntry *float64 `json:"redis_bytes_per_pending_entry,omitempty"`
	// Processes is CPU and memory of each server process (from /proc).
	Processes    []ProcUsage   `json:"processes,omitempty"`
	Series       []SecondPoint `json:"series"`
	Samples      []SamplePoint `json:"samples"`
	ScrapeErrors []string      `json:"scrape_errors,omitempty"`
}

// ProcUsage is one server process over a run.
type ProcUsage struct {
	Name string `json:"name"`
	// CPUCores is CPU time over wall time (1 = one full core).
	CPUCores        float64 `json:"cpu_cores"`
	CPUPerRequestUS float64 `json:"cpu_us_per_request"`
	RSSMaxBytes     int64   `json:"rss_max_bytes"`
}

// SecondPoint is one second of a run (by completion time).
type SecondPoint struct {
	T      float64 `json:"t"`
	OK     int64   `json:"ok"`
	Errors int64   `json:"errors"`
	P50MS  float64 `json:"p50_ms"`
	P99MS  float64 `json:"p99_ms"`
}

// SamplePoint is one reading of the target's metrics, Redis and processes.
type SamplePoint struct {
	T               float64     `json:"t"`
	Pending         float64     `json:"pending_entries"`
	OldestAgeS      float64     `json:"oldest_pending_age_s"`
	Accepted        float64     `json:"accepted"`
	RedisUsedMemory int64       `json:"redis_used_memory"`
	Procs           []ProcPoint `json:"procs,omitempty"`
}

// ProcPoint is one process at one sample.
type ProcPoint struct {
	Name       string  `json:"name"`
	CPUSeconds float64 `json:"cpu_s"`
	RSS        int64   `json:"rss"`
}
