//go:build !nodev

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/oklog/run"

	"github.com/keepwatch/keepwatch/internal/auth"
	"github.com/keepwatch/keepwatch/internal/ferret"
)

// devConfig is every flag of `keepwatch dev`.
type devConfig struct {
	dataDir       string
	commandAddr   string
	queryAddr     string
	authSecret    secret
	user          string
	tokenTTL      time.Duration
	flushInterval time.Duration
	demoAddr      string
	rules         rulesConfig
}

func (c *devConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.dataDir, "data-dir", "./keepwatch-data", "where Redis' append-only file, the embedded MongoDB's SQLite files and the dev auth secret live")
	fs.StringVar(&c.commandAddr, "command-addr", ":8080", "address of the command API")
	fs.StringVar(&c.queryAddr, "query-addr", ":8081", "address of the query API")
	c.authSecret.register(fs, "auth-secret", "HS256 secrets, comma-separated (empty: a random one made once and kept in --data-dir)")
	fs.StringVar(&c.user, "user", "dev", "user of the printed development token")
	fs.DurationVar(&c.tokenTTL, "token-ttl", 30*24*time.Hour, "how long the printed development token is valid")
	fs.DurationVar(&c.flushInterval, "flush-interval", 5*time.Second, "time between two drains of the buffer to MongoDB (an entry waits about this long)")
	fs.StringVar(&c.demoAddr, "demo-addr", "localhost:8083", "address of the player SDK demo page (empty: none); the page holds the development token, so keep it on loopback")
	c.rules.register(fs)
}

// queryFlags are the flags dev hands its query service: the rules.
func (c *devConfig) queryFlags(log *slog.Logger) (map[string]string, error) {
	r, err := c.rules.get(log)
	if err != nil {
		return nil, err
	}
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
	return map[string]string{
		"finished-percent": f(r.FinishedPercent), "finished-remaining": f(r.FinishedRemaining),
		"min-resume-percent": f(r.MinResumePercent), "min-resume-seconds": f(r.MinResumeSeconds),
		"keep-watching-max-age": c.rules.maxAge.String(),
	}, nil
}

// runDev runs the command API with its flusher and the query API in one
// process, on a Redis it starts (redis-server from PATH, else an embedded
// one) and an embedded FerretDB, all keeping their data in --data-dir.
func runDev(ctx context.Context, env *environment, args []string) error {
	fs := newFlagSet(env, "dev", "Run command, flusher and query in one process with no setup: Redis (redis-server from PATH, else embedded) and an embedded MongoDB-protocol server (FerretDB on SQLite) keep their data in --data-dir.")
	var cfg devConfig
	cfg.register(fs)
	if err := parseFlags(env, fs, args); err != nil {
		return err
	}
	if cfg.tokenTTL <= 0 || cfg.flushInterval <= 0 {
		return usageError{"--token-ttl and --flush-interval must be positive"}
	}
	// Humans read dev's logs: text unless the operator asked for a format.
	denv := *env
	if env.getenv("KEEPWATCH_LOG_FORMAT") == "" {
		denv.logger = newLogger(env.stderr, env.getenv("KEEPWATCH_LOG_LEVEL"), "text")
	}
	return runDevWith(ctx, &denv, cfg)
}

func runDevWith(ctx context.Context, env *environment, cfg devConfig) error {
	log := env.logger.With("service", "dev")
	if err := os.MkdirAll(cfg.dataDir, 0o700); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	secrets, err := cfg.authSecret.get()
	if err != nil {
		return err
	}
	if secrets == "" {
		s, created, err := loadOrCreateSecret(cfg.dataDir)
		if err != nil {
			return err
		}
		secrets = s
		if created {
			log.Info("made a development auth secret", "file", filepath.Join(cfg.dataDir, devSecretFile))
		}
	}

	rds, err := startDevRedis(ctx, filepath.Join(cfg.dataDir, "redis"))
	if err != nil {
		return fmt.Errorf("start redis: %w", err)
	}
	defer func() {
		if err := rds.Stop(); err != nil {
			log.Error("stop redis", "err", err)
		}
	}()
	if rds.Embedded {
		fmt.Fprintln(env.stderr, "NOTICE: redis-server is not on PATH, so keepwatch dev uses an embedded Redis-protocol server (miniredis).")
		fmt.Fprintln(env.stderr, "        It keeps the buffer in memory: it is saved to the data directory on Ctrl-C, but a crash or kill")
		fmt.Fprintln(env.stderr, "        loses events not yet flushed to MongoDB. Install redis-server (Debian: apt-get install redis-server)")
		fmt.Fprintln(env.stderr, "        for an append-only file like production's.")
	}

	mongoDir := filepath.Join(cfg.dataDir, "mongo")
	fdb, err := ferret.Start(ctx, ferret.Config{Dir: mongoDir})
	if err != nil {
		return fmt.Errorf("start embedded mongodb: %w", err)
	}
	defer fdb.Stop()

	demo, err := listenDemo(cfg.demoAddr)
	if err != nil {
		return err
	}
	defer demo.Close()

	// The services are configured through their own flags, by name, so dev
	// gets every default of `keepwatch command` and `keepwatch query`.
	common := map[string]string{
		"auth-secret": secrets,
		"redis-url":   rds.URL,
		"mongo-uri":   withPoolSize(fdb.URI(), devMongoPool),
		"migrate":     "true",
		// Ctrl-C should not take long on a laptop.
		"shutdown-grace": "5s",
		// The demo page calls both APIs from its own origin.
		"cors-origins": demo.Origins(),
	}
	var cc commandConfig
	if err := setFlags("command", cc.register, common, map[string]string{
		"http-addr": cfg.commandAddr, "flush": "true", "flush-interval": cfg.flushInterval.String(),
	}); err != nil {
		return err
	}
	rules, err := cfg.queryFlags(log)
	if err != nil {
		return err
	}
	var qc queryConfig
	if err := setFlags("query", qc.register, common, rules, map[string]string{"http-addr": cfg.queryAddr}); err != nil {
		return err
	}

	// One run group for both services and one signal actor: when either
	// stops (error or Ctrl-C), the other is stopped too.
	var g run.Group
	// The embedded MongoDB's server side holds a descriptor per connection
	// of the two services' pools, and so does an embedded Redis.
	reserved := cc.files() + qc.files() + cc.mongo.files() + qc.mongo.files()
	if rds.Embedded {
		reserved += cc.redis.files() + qc.redis.files()
	}
	files := fileBudget(reserved, 2)
	if err := addCommand(ctx, env, &g, &cc, "keepwatch-dev", files); err != nil {
		return err
	}
	if err := addQuery(ctx, env, &g, &qc, "keepwatch-dev", files); err != nil {
		// The command service holds connections and a listener: run it
		// down.
		runDown(&g)
		return err
	}
	tok, err := auth.Mint(firstSecret(secrets), cfg.user, cfg.tokenTTL)
	if err != nil {
		runDown(&g)
		return err
	}
	if err := demo.Serve(&g, demoPage{CommandURL: httpURL(cfg.commandAddr), QueryURL: httpURL(cfg.queryAddr), Token: tok, User: cfg.user}); err != nil {
		runDown(&g)
		return err
	}
	printBanner(env, cfg, rds, mongoDir, fdb.Addr(), tok, demo.URL())
	addSignal(&g, ctx, log)
	err = g.Run()
	log.Info("stopped; data kept", "dir", cfg.dataDir)
	return err
}

// runDown runs g only to stop it at once: its actors release what they hold.
func runDown(g *run.Group) {
	g.Add(func() error { return errors.New("start-up failed") }, func(error) {})
	_ = g.Run()
}

// devMongoPool bounds each service's MongoDB connections in keepwatch dev: a
// laptop needs few, and the embedded server holds a descriptor for each, so
// the driver's 100 would eat the open-file limit (often 1024, or less).
const devMongoPool = 16

// withPoolSize sets maxPoolSize on a MongoDB URI.
func withPoolSize(uri string, n int) string {
	u, err := url.Parse(uri)
	if err != nil {
		return uri
	}
	q := u.Query()
	q.Set("maxPoolSize", strconv.Itoa(n))
	u.RawQuery = q.Encode()
	if u.Path == "" {
		u.Path = "/" // the URI format wants it before the options
	}
	return u.String()
}

// setFlags registers a service's flags on a private flag set and sets them
// by name, failing on a name the service does not have.
func setFlags(name string, register func(*flag.FlagSet), sets ...map[string]string) error {
	fs := flag.NewFlagSet("dev "+name, flag.ContinueOnError)
	register(fs)
	for _, set := range sets {
		for k, v := range set {
			if err := fs.Set(k, v); err != nil {
				return fmt.Errorf("configure %s --%s: %w", name, k, err)
			}
		}
	}
	return nil
}

func firstSecret(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			return s[:i]
		}
	}
	return s
}

// httpURL turns a listen address into a URL a browser or curl can use.
func httpURL(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "http://" + addr
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "localhost"
	}
	return "http://" + net.JoinHostPort(host, port)
}

func printBanner(env *environment, cfg devConfig, rds *devRedis, mongoDir, mongoAddr, tok, demoURL string) {
	cmdURL, queryURL := httpURL(cfg.commandAddr), httpURL(cfg.queryAddr)
	w := env.stdout
	demo := ""
	if demoURL != "" {
		demo = "\n  demo page    " + demoURL + "   a video tracked by the player SDK (sdk/js) and the keep-watching row it feeds"
	}
	fmt.Fprintf(w, `
keepwatch dev is running. Data: %s (survives restarts). Ctrl-C stops everything.
%s
  command API  %s   POST /v1/progress, POST /v1/progress/batch, DELETE /v1/progress/{video_id}, DELETE /v1/progress
  query API    %s   GET /v1/keep-watching, GET /v1/progress?video_ids=..., GET /v1/progress/{video_id}, GET /v1/export
  flusher      in-process, every %s
  Redis        %s
  MongoDB      embedded FerretDB on %s, SQLite in %s
  API docs     %s/openapi.json

Development token for user %s (valid %s):

  %s

Post progress, then read keep-watching (shows at once, before the flush):

  curl -i -X POST %s/v1/progress -H 'Authorization: Bearer %s' -H 'Content-Type: application/json' -d '{"video_id":"big-buck-bunny","percent":42.5,"position":268.5,"duration":635}'

  curl -s %s/v1/keep-watching -H 'Authorization: Bearer %s'

`, cfg.dataDir, demo, cmdURL, queryURL, cfg.flushInterval, rds.Describe, mongoAddr, mongoDir, cmdURL,
		strconv.Quote(cfg.user), cfg.tokenTTL, tok, cmdURL, tok, queryURL, tok)
}
