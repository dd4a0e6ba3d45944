package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/keepwatch/keepwatch"
	"github.com/keepwatch/keepwatch/command/flush"
	"github.com/keepwatch/keepwatch/storage/mongo"
)

const replaySynopsis = `List, inspect, replay or discard dead-lettered batches.

  keepwatch replay list [flags]          dead letters, oldest first
  keepwatch replay show ID [flags]       one dead letter with its entries and errors
  keepwatch replay retry ID [flags]      write it again (newest wins: an old entry never
                                         overwrites newer progress); removed when all applied
  keepwatch replay retry --all [flags]   every dead letter, with progress on stderr
  keepwatch replay discard ID [flags]    delete it for good`

// runReplay is `keepwatch replay`, the operators' tool for dead letters.
func runReplay(ctx context.Context, env *environment, args []string) error {
	var (
		mc    mongoConfig
		all   bool
		limit int
	)
	verb, args := splitVerb(args)
	var id string
	if verb == "show" || verb == "discard" || verb == "retry" {
		id, args = splitVerb(args)
	}
	fs := newFlagSet(env, "replay list|show|retry|discard", replaySynopsis)
	mc.registerConnection(fs)
	fs.BoolVar(&all, "all", false, "retry: replay every dead letter")
	fs.IntVar(&limit, "limit", 100, "list: most dead letters shown (0: all)")
	if err := parseFlags(env, fs, args); err != nil {
		return err
	}
	switch {
	case verb == "list":
	case verb == "retry" && (id != "") == all:
		return usageError{"retry takes either an ID or --all"}
	case (verb == "show" || verb == "discard") && id == "":
		return usageError{verb + " takes a dead letter ID (see keepwatch replay list)"}
	case verb != "show" && verb != "discard" && verb != "retry":
		fs.Usage()
		return usageError{fmt.Sprintf("want list, show, retry or discard, got %q", verb)}
	}
	store, err := mc.open(ctx, env, "keepwatch-replay", false)
	if err != nil {
		return err
	}
	defer func() { _ = store.Close(context.WithoutCancel(ctx)) }()

	switch verb {
	case "list":
		return replayList(ctx, env, store, limit)
	case "show":
		return replayShow(ctx, env, store, id)
	case "discard":
		dl, err := store.DeadLetter(ctx, id)
		if err != nil {
			return err
		}
		if err := store.DeleteDeadLetter(ctx, id); err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "discarded dead letter %s (%d entries, last error: %s)\n", id, len(dl.Entries), dl.Error)
		return nil
	default:
		return replayRetry(ctx, env, store, id)
	}
}

func replayList(ctx context.Context, env *environment, store *mongo.Store, limit int) error {
	list, err := store.DeadLetters(ctx, limit)
	if err != nil {
		return err
	}
	if len(list) == 0 {
		fmt.Fprintln(env.stdout, "no dead letters")
		return nil
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tENTRIES\tATTEMPTS\tFIRST FAILURE\tLAST FAILURE\tERROR")
	for _, d := range list {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\n", d.ID, d.Count, d.Attempts,
			d.FirstFailure.UTC().Format(time.RFC3339), d.LastFailure.UTC().Format(time.RFC3339), shorten(d.Error, 100))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if limit > 0 && len(list) == limit {
		fmt.Fprintf(env.stdout, "(first %d; --limit 0 lists all)\n", limit)
	}
	return nil
}

func replayShow(ctx context.Context, env *environment, store *mongo.Store, id string) error {
	dl, err := store.DeadLetter(ctx, id)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "dead letter %s\n  entries:       %d\n  attempts:      %d\n  first failure: %s\n  last failure:  %s\n  error:         %s\n\n",
		dl.ID, len(dl.Entries), dl.Attempts, dl.FirstFailure.UTC().Format(time.RFC3339Nano),
		dl.LastFailure.UTC().Format(time.RFC3339Nano), dl.Error)
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "USER\tVIDEO\tEVENT TIME\tKIND\tPERCENT\tPOSITION\tDURATION\tERROR")
	for _, e := range dl.Entries {
		kind := "progress"
		if e.Deleted() {
			kind = "deleted"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%g\t%s\t%s\t%s\n", e.UserID, e.VideoID,
			time.UnixMilli(e.EventTime).UTC().Format(time.RFC3339Nano), kind, e.Percent,
			seconds(e.Position), seconds(e.Duration), shorten(e.Error, 100))
	}
	return tw.Flush()
}

func replayRetry(ctx context.Context, env *environment, store *mongo.Store, id string) error {
	r := flush.NewReplayer(store)
	// Progress goes to stderr at most once a second, and once at the end.
	var last time.Time
	progress := func(done, total int, so flush.ReplayResult) {
		if done < total && time.Since(last) < time.Second {
			return
		}
		last = time.Now()
		fmt.Fprintf(env.stderr, "replayed %d/%d entries (written %d, stale %d, still failing %d)\n",
			done, total, so.Written, so.Stale, so.StillFailing)
	}
	var (
		res flush.ReplayResult
		err error
	)
	if id == "" {
		res, err = r.RetryAll(ctx, progress)
	} else {
		res, err = r.Retry(ctx, id, progress)
	}
	fmt.Fprintf(env.stdout, "replayed: %d dead letters applied and removed, %d entries written, %d stale (MongoDB had newer), %d still failing\n",
		res.DeadLetters, res.Written, res.Stale, res.StillFailing)
	if err != nil {
		return err
	}
	if res.StillFailing > 0 {
		return fmt.Errorf("%d entries still fail and stay in dead letters; see keepwatch replay list", res.StillFailing)
	}
	return nil
}

func seconds(v float64) string {
	if v == keepwatch.Unknown {
		return "-"
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}

func shorten(s string, n int) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}
