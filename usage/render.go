package usage

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Formats are the report formats WriteReport accepts.
var Formats = []string{"text", "json", "csv", "html"}

// WriteReport writes r in format (text, json, csv or html).
func WriteReport(w io.Writer, r *Report, format string) error {
	switch format {
	case "text":
		return writeText(w, r)
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	case "csv":
		return writeCSV(w, r)
	case "html":
		return writeHTML(w, r)
	}
	return fmt.Errorf("usage: unknown report format %q (want text, json, csv or html)", format)
}

func kindTitle(kind string) string {
	switch kind {
	case FindingUnusedGrant:
		return "grant never used"
	case FindingUnreadColumn:
		return "column never read"
	case FindingUnclassified:
		return "unclassified personal data"
	}
	return kind
}

func fmtTime(t *time.Time) string {
	if t == nil {
		return "never"
	}
	return t.UTC().Format("2006-01-02 15:04Z")
}

// errWriter keeps the first write error so text rendering can ignore it
// until the end.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return len(p), nil
	}
	_, e.err = e.w.Write(p)
	return len(p), nil
}

func writeText(out io.Writer, r *Report) error {
	w := &errWriter{w: out}
	fmt.Fprintf(w, "pgveil usage report: policy %s (%s), since %s (%s)\n", r.Policy, r.PolicyHash,
		r.Since.Format(time.RFC3339), r.Window)
	from := "no data in the window"
	if r.DataFrom != nil {
		from = "data from " + r.DataFrom.Format(time.RFC3339)
	}
	fmt.Fprintf(w, "%s; %d column uses by %d users in %d role sets\n\n", from, r.ColumnUses, r.Users, r.RoleSets)

	fmt.Fprintln(w, "Columns (reads = statements that read the column; raw/masked/decrypted/refused)")
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "  COLUMN\tCLASS\tRAW\tMASKED\tDECRYPTED\tREFUSED\tROWS\tLAST RAW READ")
	for _, c := range r.Columns {
		class := c.Class
		if class == "" {
			class = "(unclassified)"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\n", c.Column, class, c.Reads["raw"], c.Reads["masked"],
			c.Reads["decrypted"], c.Reads["refused"], c.Rows, fmtTime(c.LastRawRead))
	}
	tw.Flush()
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Reads by role (a statement counts for every policy role its session held)")
	for _, c := range r.Columns {
		var parts []string
		for _, rr := range c.ByRole {
			if rr.Total() == 0 {
				continue
			}
			parts = append(parts, fmt.Sprintf("%s %s", rr.Role, treatmentSummary(rr)))
		}
		if len(parts) == 0 {
			parts = []string{"no reads"}
		}
		fmt.Fprintf(w, "  %s: %s\n", c.Column, strings.Join(parts, "; "))
	}
	fmt.Fprintln(w)

	fmt.Fprintf(w, "Findings (%d)\n", len(r.Findings))
	if len(r.Findings) == 0 {
		fmt.Fprintln(w, "  none: every grant was used and every classified column was read")
	}
	for i, f := range r.Findings {
		fmt.Fprintf(w, "\n%d. [%s] %s\n", i+1, kindTitle(f.Kind), f.Summary)
		for _, e := range f.Evidence {
			fmt.Fprintf(w, "   - %s\n", e)
		}
		fmt.Fprintf(w, "   recommendation: %s\n", f.Recommendation)
		if f.Diff != "" {
			for _, l := range strings.Split(strings.TrimSuffix(f.Diff, "\n"), "\n") {
				fmt.Fprintf(w, "     %s\n", l)
			}
		}
	}
	if r.PolicyDiff != "" {
		fmt.Fprintf(w, "\nSuggested policy change (all findings; apply with git apply or patch -p1):\n%s", r.PolicyDiff)
	}
	return w.err
}

func treatmentSummary(rr RoleReads) string {
	var parts []string
	for _, p := range []struct {
		n    int64
		name string
	}{{rr.Raw, "raw"}, {rr.Decrypted, "decrypted"}, {rr.Masked, "masked"}, {rr.Refused, "refused"}} {
		if p.n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", p.name, p.n))
		}
	}
	return strings.Join(parts, ", ")
}

// csvHeader is the CSV layout: one "usage" record per column and role,
// then one "finding" record per finding.
var csvHeader = []string{"record", "kind", "subject", "class", "role", "raw", "masked", "decrypted", "refused",
	"rows_returned", "last_read", "last_raw_read", "summary", "evidence", "recommendation"}

func writeCSV(out io.Writer, r *Report) error {
	w := csv.NewWriter(out)
	if err := w.Write(csvHeader); err != nil {
		return err
	}
	csvTime := func(t *time.Time) string {
		if t == nil {
			return ""
		}
		return t.UTC().Format(time.RFC3339)
	}
	i64 := func(n int64) string { return strconv.FormatInt(n, 10) }
	for _, c := range r.Columns {
		for _, rr := range c.ByRole {
			if rr.Total() == 0 {
				continue
			}
			w.Write([]string{"usage", "", c.Column, c.Class, rr.Role, i64(rr.Raw), i64(rr.Masked), i64(rr.Decrypted),
				i64(rr.Refused), i64(rr.Rows), csvTime(c.LastRead), csvTime(c.LastRawRead), "", "", ""})
		}
	}
	for _, f := range r.Findings {
		role := ""
		if f.Kind == FindingUnusedGrant {
			role = f.Subject
		}
		w.Write([]string{"finding", f.Kind, f.Subject, f.Class, role, "", "", "", "", "", "", "",
			f.Summary, strings.Join(f.Evidence, "; "), f.Recommendation})
	}
	w.Flush()
	return w.Error()
}
