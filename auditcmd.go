package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/pflag"

	"github.com/pgveil/pgveil/audit"
)

const auditUsage = `Usage:
  pgveil audit verify [--key-file F] [--expect-head SEQ:HASH] [--no-rotated] LOG [LOG...]

verify checks the hash chain of an audit log written by pgveil serve
--audit-log: every line's sequence number, the hash of the line before it,
and, with --key-file, its HMAC. Given one LOG it also walks the rotated
files LOG.N ... LOG.1 (oldest first); given several, it walks them in the
order given (oldest first).

Exit status: 0 the log is intact (one summary line, then one line per gap
or torn marker); 1 the log is broken (the first broken line as
FILE:LINE: reason) or unreadable; 2 a usage error.

Flags:
`

// maxMarkerLines bounds how many marker lines verify prints.
const maxMarkerLines = 20

// runAudit runs "pgveil audit ..." and returns the exit code.
func runAudit(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, auditUsage+verifyFlags().FlagUsages())
		return exitUsage
	}
	switch args[0] {
	case "verify":
		return runAuditVerify(ctx, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, auditUsage+verifyFlags().FlagUsages())
		return exitOK
	}
	fmt.Fprintf(stderr, "pgveil: unknown audit command %q (try: pgveil audit verify LOG)\n", args[0])
	return exitUsage
}

func verifyFlags() *pflag.FlagSet {
	fs := pflag.NewFlagSet("audit verify", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.String("key-file", "", "HMAC key file the log was written with (mode 0600); without it HMACs are not checked, and a line edited with every later hash recomputed is not detected")
	fs.String("expect-head", "", "SEQ:HASH of a line known to have been written (the head the proxy exports); detects a cut tail")
	fs.Bool("no-rotated", false, "verify only the files given, without LOG.1, LOG.2, ...")
	return fs
}

func runAuditVerify(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	usage := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "pgveil: "+format+"\n", a...)
		return exitUsage
	}
	fs := verifyFlags()
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprint(stdout, auditUsage+fs.FlagUsages())
			return exitOK
		}
		return usage("%v", err)
	}
	var envErr error
	fs.VisitAll(func(f *pflag.Flag) {
		name := "PGVEIL_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(name); ok && !f.Changed && envErr == nil {
			if err := fs.Set(f.Name, v); err != nil {
				envErr = fmt.Errorf("invalid value %q for %s: %v", v, name, err)
			}
		}
	})
	if envErr != nil {
		return usage("%v", envErr)
	}
	if fs.NArg() == 0 {
		return usage("missing audit log path (pgveil audit verify LOG)")
	}
	var opts audit.VerifyOptions
	if kf, _ := fs.GetString("key-file"); kf != "" {
		key, err := audit.LoadKey(kf)
		if err != nil {
			return usage("--key-file: %v", err)
		}
		opts.Key = key
	}
	if eh, _ := fs.GetString("expect-head"); eh != "" {
		a, err := audit.ParseAnchor(eh)
		if err != nil {
			return usage("--expect-head: %v", err)
		}
		opts.ExpectHead = &a
	}
	files := fs.Args()
	if noRotated, _ := fs.GetBool("no-rotated"); !noRotated && len(files) == 1 {
		var err error
		files, err = audit.Files(files[0])
		if err != nil {
			var be *audit.BreakError
			if errors.As(err, &be) {
				fmt.Fprintln(stderr, be.Error())
				return exitError
			}
			return usage("%v", err)
		}
	}
	for _, f := range files {
		if fi, err := os.Stat(f); err != nil {
			return usage("%v", err)
		} else if !fi.Mode().IsRegular() {
			return usage("%s is not a regular file", f)
		}
	}
	res, err := audit.Verify(ctx, files, opts)
	if err != nil {
		var be *audit.BreakError
		if errors.As(err, &be) {
			fmt.Fprintln(stderr, be.Error())
			fmt.Fprintf(stderr, "pgveil: audit log broken: %d lines before it verified\n", res.Records)
		} else {
			fmt.Fprintln(stderr, "pgveil:", err)
		}
		return exitError
	}
	fmt.Fprintln(stdout, verifySummary(files[len(files)-1], res, opts))
	for i, m := range res.Markers {
		if i == maxMarkerLines {
			fmt.Fprintf(stdout, "... and %d more markers\n", len(res.Markers)-i)
			break
		}
		at := m.Time.UTC().Format("2006-01-02T15:04:05.000000Z")
		switch m.Kind {
		case audit.KindGap:
			fmt.Fprintf(stdout, "%s:%d: gap marker: %d records lost (%s), noted at %s\n", m.File, m.Line, m.Lost, m.Reason, at)
		case audit.KindTorn:
			fmt.Fprintf(stdout, "%s:%d: torn marker: an incomplete line of %d bytes (a crash mid-write) was cut at restart, %s\n",
				m.File, m.Line, m.TornBytes, at)
		}
	}
	return exitOK
}

// verifySummary is the one line verify prints for an intact log.
func verifySummary(log string, res audit.Result, opts audit.VerifyOptions) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: intact: %s, %d records", log, auditCount(len(res.Files), "file"), res.Records)
	if res.Records == 0 {
		b.WriteString(" (empty)")
	} else {
		if res.FromGenesis {
			fmt.Fprintf(&b, " (seq %d-%d from genesis)", res.FirstSeq, res.LastSeq)
		} else {
			fmt.Fprintf(&b, " (seq %d-%d; the lines before %d are not present: rotated away or removed)", res.FirstSeq, res.LastSeq, res.FirstSeq)
		}
		const layout = "2006-01-02T15:04:05.000000Z"
		fmt.Fprintf(&b, ", %s to %s", res.FirstTime.UTC().Format(layout), res.LastTime.UTC().Format(layout))
	}
	switch {
	case res.HMACChecked:
		b.WriteString(", HMAC verified")
	case res.HMACPresent:
		b.WriteString(", HMAC not checked (no --key-file)")
	case res.Records > 0:
		b.WriteString(", no HMAC (written without a key)")
	}
	if opts.ExpectHead != nil {
		b.WriteString(", expected head found")
	}
	var gaps, torn int
	for _, m := range res.Markers {
		if m.Kind == audit.KindGap {
			gaps++
		} else {
			torn++
		}
	}
	if gaps > 0 {
		fmt.Fprintf(&b, ", %s (%d records lost)", auditCount(gaps, "gap marker"), res.Lost)
	}
	if torn > 0 {
		fmt.Fprintf(&b, ", %s", auditCount(torn, "torn marker"))
	}
	if res.IncompleteTail > 0 {
		fmt.Fprintf(&b, ", incomplete last line ignored (%d bytes: a write in progress, or a crash not yet sealed by a restart)", res.IncompleteTail)
	}
	if res.Records > 0 {
		fmt.Fprintf(&b, ", head %s", res.Head)
	}
	return b.String()
}

// auditCount returns "1 file", "2 files".
func auditCount(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
