package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/pflag"

	"github.com/pgveil/pgveil/rules"
	"github.com/pgveil/pgveil/usage"
)

// reportSampleColumns bounds how many unclassified columns report
// --upstream samples.
const reportSampleColumns = 200

// runReport is pgveil report: it reads the usage ledger's store and prints
// the data-minimisation review. It returns the exit code.
func runReport(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return exitCode(report(ctx, args, stdout, stderr), stderr)
}

func report(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("report", pflag.ContinueOnError)
	storeSpec := fs.String("usage-store", "", "the usage ledger's store: sqlite:usage.db or postgres://user@host/db (required)")
	policyFile := fs.String("policy", "", "the policy file (YAML) the findings are judged against (required)")
	since := fs.Duration("since", 720*time.Hour, "the window: how far back to read the ledger")
	format := fs.String("format", "text", "output format: text, json, csv or html")
	upstream := fs.String("upstream", "", "also sample values of unclassified columns that are read, to spot personal data by content (values are never printed): postgres://user@host/db")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	switch {
	case *storeSpec == "":
		return usagef("missing --usage-store")
	case !slices.Contains(usage.Formats, *format):
		return usagef("invalid --format %q: want text, json, csv or html", *format)
	case *since <= 0:
		return usagef("invalid --since %v: want a positive duration such as 720h", *since)
	}
	if err := checkStoreSpec(*storeSpec); err != nil {
		return err
	}
	if *upstream != "" {
		if _, err := pgx.ParseConfig(*upstream); err != nil || !isPostgresURL(*upstream) {
			return usagef("invalid --upstream: want postgres://user[:password]@host[:port]/db")
		}
	}
	pol, err := loadPolicy(*policyFile, stderr)
	if err != nil {
		return err
	}
	text, err := os.ReadFile(*policyFile)
	if err != nil {
		return usagef("cannot read --policy: %v", err)
	}

	store, err := usage.Open(ctx, *storeSpec)
	if err != nil {
		return err
	}
	defer store.Close()
	now := time.Now()
	from := now.Add(-*since)
	rows, err := store.Query(ctx, from)
	if err != nil {
		return err
	}

	var samples map[string]usage.SampleResult
	if *upstream != "" {
		samples, err = sampleUnclassified(ctx, *upstream, pol, rows)
		if err != nil {
			return err
		}
	}
	name := *policyFile
	if filepath.IsAbs(name) {
		name = filepath.Base(name)
	}
	rep, err := usage.BuildReport(usage.ReportConfig{
		Policy: pol, PolicyText: text, PolicyName: filepath.ToSlash(name),
		Rows: rows, Since: from, Now: now, Samples: samples,
	})
	if err != nil {
		return err
	}
	return usage.WriteReport(stdout, rep, *format)
}

func isPostgresURL(s string) bool {
	return strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://")
}

// checkStoreSpec rejects a malformed --usage-store and a SQLite file that
// does not exist (a report must not create an empty store for a typo).
func checkStoreSpec(spec string) error {
	switch {
	case strings.HasPrefix(spec, "sqlite:"):
		path := strings.TrimPrefix(strings.TrimPrefix(spec, "sqlite:"), "//")
		if path == "" {
			return usagef("invalid --usage-store %q: want sqlite:path/to/usage.db", spec)
		}
		if _, err := os.Stat(path); err != nil {
			return usagef("cannot read --usage-store: %v", err)
		}
		return nil
	case isPostgresURL(spec):
		if _, err := pgx.ParseConfig(spec); err != nil {
			return usagef("invalid --usage-store: not a valid PostgreSQL URL")
		}
		return nil
	}
	return usagef("invalid --usage-store: want sqlite:path/to/usage.db or postgres://user@host/db")
}

// sampleUnclassified samples the values of unclassified columns that the
// ledger shows being read. Only counts come back; values are discarded.
func sampleUnclassified(ctx context.Context, upstream string, pol *rules.Policy, rows []usage.Row) (map[string]usage.SampleResult, error) {
	type col struct{ schema, table, column string }
	seen := map[string]col{}
	for _, r := range rows {
		if r.Reads == 0 || r.Treatment == usage.Refused {
			continue
		}
		if pol.Column(rules.ColumnKey{Schema: r.Schema, Table: r.Table, Column: r.Column}) != nil {
			continue
		}
		seen[r.ColumnName()] = col{r.Schema, r.Table, r.Column}
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	slices.Sort(names)
	if len(names) > reportSampleColumns {
		names = names[:reportSampleColumns]
	}
	cctx, cancel := context.WithTimeout(ctx, upstreamTimeout)
	conn, err := pgx.Connect(cctx, upstream)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("upstream: %w", err)
	}
	defer conn.Close(context.Background())
	out := make(map[string]usage.SampleResult, len(names))
	for _, n := range names {
		c := seen[n]
		out[n] = usage.SampleColumn(ctx, conn, c.schema, c.table, c.column, usage.SampleLimit)
	}
	return out, nil
}
