// Command kwbench benchmarks keepwatch against its baselines.
//
//	kwbench compare   throughput with wrk: bare Fiber, keepwatch, naive Redis
//	kwbench fleet     a simulated player fleet (open model) with a full report
//	kwbench serve     run one baseline server (used by compare and fleet)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signalContext()
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmds := map[string]func(context.Context, []string, io.Writer) error{
		"compare": runCompare,
		"fleet":   runFleet,
		"serve":   runServe,
	}
	if len(args) == 0 || cmds[args[0]] == nil {
		fmt.Fprintln(stderr, "usage: kwbench compare|fleet|serve [flags]  (kwbench SUBCOMMAND --help for flags)")
		return 2
	}
	err := cmds[args[0]](ctx, args[1:], stdout)
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	default:
		fmt.Fprintf(stderr, "kwbench %s: %v\n", args[0], err)
		return 1
	}
}

// signalContext is cancelled by SIGINT or SIGTERM: the servers stop on the
// latter, the whole benchmark (stopping its children) on either.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
}
