// Command keepwatch is the one binary of keepwatch: each component is a
// subcommand (command, flush, query, migrate, replay, token, dev) in its own file.
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

	"github.com/redis/go-redis/v9"
)

// subcommand is one component of the binary. run gets its arguments after the
// subcommand name and returns when ctx is cancelled (SIGTERM/SIGINT) or on error.
type subcommand struct {
	summary string
	run     func(ctx context.Context, env *environment, args []string) error
}

// environment is what main hands every subcommand: where to write, how to log,
// and how to read KEEPWATCH_* variables (injected so tests can run Main).
type environment struct {
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string
	logger *slog.Logger
}

func subcommands() map[string]subcommand {
	return map[string]subcommand{
		"command": {"run the command API (POST progress) and, by default, the flusher", runCommand},
		"flush":   {"run only the flusher: Redis buffer to MongoDB", runFlush},
		"query":   {"run the query API (keep-watching for frontends)", runQuery},
		"migrate": {"apply (up) or show (status) MongoDB migrations", runMigrate},
		"replay":  {"list, show, retry or discard dead-lettered batches", runReplay},
		"token":   {"mint a development token for a user", runToken},
		"dev":     {"run command, flusher and query in one process with no setup", runDev},
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
	cmds := subcommands()
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(env.stdout, cmds)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	sc, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(env.stderr, "keepwatch: unknown subcommand %q\n\n", args[0])
		usage(env.stderr, cmds)
		return 2
	}
	err := sc.run(ctx, env, args[1:])
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
	fmt.Fprintln(w, "Run 'keepwatch <subcommand> --help' for its flags and defaults.")
}

type redisLogger struct{ l *slog.Logger }

func (r redisLogger) Printf(_ context.Context, format string, v ...any) {
	r.l.Debug("redis client", "msg", fmt.Sprintf(format, v...))
}

// usageError marks a bad invocation (exit code 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }
