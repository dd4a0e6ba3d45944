package main

import (
	"flag"
	"log/slog"
	"strconv"
	"time"

	"github.com/keepwatch/keepwatch"
)

// rulesConfig holds the flags of the read-side rules (keepwatch.Rules) and
// the age limit of keep watching: `keepwatch query`, `keepwatch dev` and
// `keepwatch export` read them.
type rulesConfig struct {
	rules  keepwatch.Rules
	maxAge time.Duration
	// threshold is --finished-threshold, the deprecated name of
	// --finished-percent that deployments still set.
	threshold deprecatedFloat
}

func (c *rulesConfig) register(fs *flag.FlagSet) {
	c.registerRules(fs)
	fs.DurationVar(&c.maxAge, "keep-watching-max-age", 180*24*time.Hour,
		"progress older than this leaves keep-watching (progress lookups still show it until --retention removes it; 0: no limit)")
}

// registerRules adds the rules' flags without the age limit (export).
func (c *rulesConfig) registerRules(fs *flag.FlagSet) {
	d := keepwatch.DefaultRules()
	fs.Float64Var(&c.rules.FinishedPercent, "finished-percent", d.FinishedPercent,
		"percent at or above which a video is finished and leaves keep-watching")
	c.threshold.dst = &c.rules.FinishedPercent
	fs.Var(&c.threshold, "finished-threshold", "deprecated: the old name of --finished-percent; set one of them")
	fs.Float64Var(&c.rules.FinishedRemaining, "finished-remaining", d.FinishedRemaining,
		"seconds: a video with fewer left is finished (the credits; needs the duration; 0: off)")
	fs.Float64Var(&c.rules.MinResumePercent, "min-resume-percent", d.MinResumePercent,
		"percent below which a video is not worth resuming and stays out of keep-watching (a misclick; 0: off)")
	fs.Float64Var(&c.rules.MinResumeSeconds, "min-resume-seconds", d.MinResumeSeconds,
		"seconds watched below which a video stays out of keep-watching (a preview; from the position, else the percent of the duration; 0: off)")
}

// get returns the rules, refusing bad ones with the flag to fix.
func (c *rulesConfig) get(log *slog.Logger) (keepwatch.Rules, error) {
	if c.threshold.set {
		log.Warn("--finished-threshold (KEEPWATCH_FINISHED_THRESHOLD) is deprecated: use --finished-percent")
	}
	if err := c.rules.Validate(); err != nil {
		return c.rules, usageError{err.Error()}
	}
	if c.maxAge < 0 {
		return c.rules, usageError{"--keep-watching-max-age must not be negative"}
	}
	return c.rules, nil
}

// deprecatedFloat is a float flag that writes another flag's variable.
type deprecatedFloat struct {
	dst *float64
	set bool
}

func (f *deprecatedFloat) String() string {
	if f.dst == nil || !f.set {
		return ""
	}
	return strconv.FormatFloat(*f.dst, 'g', -1, 64)
}

func (f *deprecatedFloat) Set(v string) error {
	n, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return err
	}
	*f.dst, f.set = n, true
	return nil
}
