package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/keepwatch/keepwatch/migrations"
)

// runMigrate is `keepwatch migrate up|status`: apply the pending MongoDB
// migrations, or list every migration with whether it is applied.
func runMigrate(ctx context.Context, env *environment, args []string) error {
	var mc mongoConfig
	verb, args := splitVerb(args)
	fs := newFlagSet(env, "migrate up|status", "Apply pending MongoDB migrations (up) or list them (status).\n"+
		"Safe to run twice and from several places at once.")
	mc.registerConnection(fs)
	if err := parseFlags(env, fs, args); err != nil {
		return err
	}
	if verb != "up" && verb != "status" {
		fs.Usage()
		return usageError{fmt.Sprintf("want up or status, got %q", verb)}
	}
	store, err := mc.open(ctx, env, "keepwatch-migrate", false)
	if err != nil {
		return err
	}
	defer func() { _ = store.Close(context.WithoutCancel(ctx)) }()
	db := store.Database()
	if verb == "up" {
		if err := migrations.Up(ctx, db, env.logger); err != nil {
			return err
		}
	}
	steps, err := migrations.Status(ctx, db)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "VERSION\tSTATE\tAPPLIED AT\tNAME\n")
	for _, s := range steps {
		state, at := "pending", "-"
		if s.Applied {
			state, at = "applied", s.AppliedAt.UTC().Format(time.RFC3339)
		}
		name := s.Name
		if s.Note != "" {
			name += " (" + s.Note + ")"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", s.Version, state, at, name)
	}
	return tw.Flush()
}

// splitVerb takes the first argument as a verb unless it is a flag.
func splitVerb(args []string) (string, []string) {
	if len(args) == 0 || (len(args[0]) > 0 && args[0][0] == '-') {
		return "", args
	}
	return args[0], args[1:]
}
