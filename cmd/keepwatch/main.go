// Command keepwatch is the one binary of keepwatch: each component is a
// subcommand (command, flush, query, migrate, replay, erase, export, token,
// dev, version) in its own file.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"syscall"

	"github.com/oklog/run"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"
)

// subcommand is one component of the binary: a task that runs once (run), or
// a service that adds its actors to the process's run group (serve) and is
// stopped by the first SIGTERM or SIGINT.
type subcommand struct {
	summary string
	run     func(ctx context.Context, env *environment, args []string) error
	serve   func(ctx context.Context, env *environment, g *run.Group, args []string) error
}

// environment is what main hands every subcommand: where to write, how to log,
// how to read KEEPWATCH_* variables (injected so tests can run Main), and the
// process's one Prometheus registry.
type environment struct {
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string
	logger *slog.Logger
	reg    *prometheus.Registry
}

// registerer is the registry as one service registers on it: every series it
// adds carries service=name, so the services of one process (keepwatch dev)
// register the same names apart.
func (e *environment) registerer(name string) prometheus.Registerer {
	return prometheus.WrapRegistererWith(prometheus.Labels{"service": name}, e.reg)
}

func subcommands() map[string]subcommand {
	return map[string]subcommand{
		"command": {summary: "run the command API (POST progress) and, by default, the flusher", serve: serveCommand},
		"flush":   {summary: "run only the flusher: Redis buffer to MongoDB", serve: serveFlush},
		"query":   {summary: "run the query API (keep-watching for frontends)", serve: serveQuery},
		"migrate": {summary: "apply (up) or show (status) MongoDB migrations", run: runMigrate},
		"replay":  {summary: "list, show, retry or discard dead-lettered batches", run: runReplay},
		"erase":   {summary: "erase everything keepwatch holds of a user (MongoDB, Redis, dead letters)", run: runErase},
		"export":  {summary: "write everything keepwatch holds of a user to stdout as NDJSON", run: runExport},
		"token":   {summary: "mint a development token for a user", run: runToken},
		"dev":     {summary: "run command, flusher and query in one process with no setup", run: runDev},
		"version": {summary: "print the version, the source revision and the Go version", run: runVersion},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	env := &environment{stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}
	env.logger = newLogger(env.stderr, env.getenv("KEEPWATCH_LOG_LEVEL"), env.getenv("KEEPWATCH_LOG_FORMAT"))
	// go-redis logs dial retries through its own process-wide logger; route
	// them to ours at debug level, since outages already show in /readyz,
	// 503 counts and our own rate-limited warnings.
	redis.SetLogger(redisLogger{env.logger})
	os.Exit(Main(ctx, env, os.Args[1:]))
}

// Main runs the binary with args (without the program name) and returns the
// exit code: 0 on success, 2 on a usage error, 1 on any other error.
func Main(ctx context.Context, env *environment, args []string) int {
	if env.logger == nil {
		env.logger = newLogger(env.stderr, env.getenv("KEEPWATCH_LOG_LEVEL"), env.getenv("KEEPWATCH_LOG_FORMAT"))
	}
	if env.reg == nil {
		env.reg = newRegistry()
	}
	cmds := subcommands()
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(env.stdout, cmds)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	if args[0] == "--version" || args[0] == "-version" {
		args = append([]string{"version"}, args[1:]...)
	}
	sc, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(env.stderr, "keepwatch: unknown subcommand %q\n\n", args[0])
		usage(env.stderr, cmds)
		return 2
	}
	var err error
	if sc.serve != nil {
		err = serve(ctx, env, sc, args)
	} else {
		err = sc.run(ctx, env, args[1:])
	}
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, new(usageError)):
		fmt.Fprintf(env.stderr, "keepwatch %s: %v\n", args[0], err)
		return 2
	default:
		env.logger.Error("exit", "subcommand", args[0], "err", err)
		return 1
	}
}

// serve runs a service until ctx ends or one of its actors stops. The
// subcommand has released what it set up if it returns an error.
func serve(ctx context.Context, env *environment, sc subcommand, args []string) error {
	var g run.Group
	if err := sc.serve(ctx, env, &g, args[1:]); err != nil {
		return err
	}
	addSignal(&g, ctx, env.logger.With("subcommand", args[0]))
	return g.Run()
}

// addSignal ends g when ctx ends (the first SIGTERM or SIGINT).
func addSignal(g *run.Group, ctx context.Context, log *slog.Logger) {
	sigCtx, cancel := context.WithCancel(ctx)
	g.Add(func() error {
		<-sigCtx.Done()
		if ctx.Err() != nil {
			log.Info("stopping", "reason", context.Cause(ctx))
		}
		return nil
	}, func(error) { cancel() })
}

// newRegistry is the process's one registry: the Go runtime's and the
// process's collectors, and keepwatch_build_info.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	b := readBuild()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keepwatch_build_info",
			Help:        "Always 1; its labels say which build runs.",
			ConstLabels: prometheus.Labels{"version": b.version, "revision": b.revision, "goversion": b.goVersion}},
			func() float64 { return 1 }),
	)
	return reg
}

func usage(w io.Writer, cmds map[string]subcommand) {
	fmt.Fprintln(w, "keepwatch ingests video players' watch progress and serves keep-watching.")
	fmt.Fprintln(w, "\nUsage: keepwatch <subcommand> [flags]\n\nSubcommands:")
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-8s %s\n", n, cmds[n].summary)
	}
	fmt.Fprintln(w, "\nEvery flag can also be set as KEEPWATCH_<NAME> (--redis-url is KEEPWATCH_REDIS_URL).")
	fmt.Fprintln(w, "Run 'keepwatch <subcommand> --help' for its flags and defaults, 'keepwatch --version' for the build.")
}

type redisLogger struct{ l *slog.Logger }

func (r redisLogger) Printf(_ context.Context, format string, v ...any) {
	r.l.Debug("redis client", "msg", fmt.Sprintf(format, v...))
}

// usageError marks a bad invocation (exit code 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }
