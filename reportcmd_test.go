package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgveil/pgveil/internal/pgcluster"
	"github.com/pgveil/pgveil/usage"
)

const reportTestPolicy = `version: 1
classes:
  email:       { mask: email }
  national_id: { mask: "partial(last=4)" }
  birth_date:  { mask: "truncate(year)" }
  card:        { mask: "partial(last=4)" }
columns:
  public.customers.email: email
  public.customers.ssn: national_id
  public.customers.birth_date: birth_date
  public.payments.card_number:
    class: card
    encrypted: { key: payments-card }
roles:
  analyst: {}
  support: { raw: [email, national_id] }
  billing: { decrypt: [card] }
`

// wantFindings are the findings the synthetic ledger must produce: a raw
// grant never used, a classified column never read, and an unclassified
// phone column being read.
var wantFindings = []string{
	"unused_grant support national_id",
	"unread_column public.customers.birth_date birth_date",
	"unclassified_personal public.customers.phone phone",
}

// fillLedger records synthetic statements through a real ledger into the
// store at spec and closes the ledger (which flushes).
func fillLedger(t *testing.T, spec string, extra ...*usage.Statement) {
	t.Helper()
	ctx := context.Background()
	store, err := usage.Open(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	l, err := usage.New(usage.Config{Store: store, FlushInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now().Add(-3 * time.Hour)
	c := func(table, column string, cl usage.ClauseSet, tr usage.Treatment) usage.ColumnUse {
		return usage.ColumnUse{Schema: "public", Table: table, Column: column, Clauses: cl, Treatment: tr}
	}
	rec := func(n int, user string, roles []string, cols ...usage.ColumnUse) {
		for range n {
			l.Record(&usage.Statement{Time: at, Database: "app", User: user, Roles: roles, Application: "psql",
				Columns: cols, Rows: 5, OK: true})
		}
	}
	rec(12, "alice", []string{"alice", "analyst"},
		c("customers", "email", usage.Output, usage.Masked), c("customers", "ssn", usage.Filter, usage.Masked),
		c("customers", "phone", usage.Output, usage.Raw), c("customers", "id", usage.Join, usage.Raw))
	rec(9, "bob", []string{"bob", "support"}, c("customers", "email", usage.Output, usage.Raw))
	rec(3, "bob", []string{"bob", "support"}, c("customers", "ssn", usage.Output, usage.Masked))
	rec(4, "carol", []string{"billing", "carol"}, c("payments", "card_number", usage.Output, usage.Decrypted))
	rec(2, "etl", []string{"etl"}, c("customers", "birth_date", usage.WriteTarget, usage.Raw))
	for _, s := range extra {
		l.Record(s)
	}
	if err := l.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

func runReportCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	code := runReport(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

func writeReportPolicy(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(p, []byte(reportTestPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func sqliteLedger(t *testing.T) string {
	t.Helper()
	spec := "sqlite:" + filepath.Join(t.TempDir(), "usage.db")
	fillLedger(t, spec)
	return spec
}

// jsonFindings runs the report as JSON and returns "kind subject class"
// per finding.
func jsonFindings(t *testing.T, out string) (*usage.Report, []string) {
	t.Helper()
	var r usage.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("report JSON: %v\n%s", err, out)
	}
	var keys []string
	for _, f := range r.Findings {
		keys = append(keys, f.Kind+" "+f.Subject+" "+f.Class)
	}
	return &r, keys
}

func TestReportFormats(t *testing.T) {
	spec := sqliteLedger(t)
	policy := writeReportPolicy(t)
	base := []string{"--usage-store", spec, "--policy", policy}

	t.Run("json", func(t *testing.T) {
		code, out, errOut := runReportCLI(t, append(base, "--format", "json")...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		r, keys := jsonFindings(t, out)
		if !slices.Equal(keys, wantFindings) {
			t.Errorf("findings %q, want %q", keys, wantFindings)
		}
		if r.Users != 4 || r.ColumnUses != 12*4+9+3+4+2 {
			t.Errorf("users %d, column uses %d", r.Users, r.ColumnUses)
		}
		if !strings.Contains(r.PolicyDiff, "+  support: { raw: [email] }") ||
			!strings.Contains(r.PolicyDiff, "+  public.customers.phone: phone") ||
			!strings.Contains(r.PolicyDiff, `+  phone: { mask: "partial(last=4)" }`) {
			t.Errorf("policy diff:\n%s", r.PolicyDiff)
		}
	})
	t.Run("text", func(t *testing.T) {
		code, out, errOut := runReportCLI(t, base...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		for _, want := range []string{
			"[grant never used] role support holds raw on class national_id but never read it raw",
			"[column never read] classified column public.customers.birth_date (class birth_date) was never read",
			"[unclassified personal data] unclassified column public.customers.phone looks like phone numbers",
			"public.customers.email: analyst masked 12; support raw 9",
			"-  support: { raw: [email, national_id] }\n+  support: { raw: [email] }",
			"Suggested policy change",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("text report lacks %q:\n%s", want, out)
			}
		}
	})
	t.Run("csv", func(t *testing.T) {
		code, out, errOut := runReportCLI(t, append(base, "--format", "csv")...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		recs, err := csv.NewReader(strings.NewReader(out)).ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		var findings, usageRecs []string
		for _, r := range recs[1:] {
			switch r[0] {
			case "finding":
				findings = append(findings, r[1]+" "+r[2]+" "+r[3])
			case "usage":
				usageRecs = append(usageRecs, strings.Join(r[2:10], ","))
			}
		}
		if !slices.Equal(findings, wantFindings) {
			t.Errorf("CSV findings %q, want %q", findings, wantFindings)
		}
		if !slices.Contains(usageRecs, "public.customers.email,email,support,9,0,0,0,45") {
			t.Errorf("CSV usage records %q", usageRecs)
		}
	})
	t.Run("html", func(t *testing.T) {
		code, out, errOut := runReportCLI(t, append(base, "--format", "html")...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		for _, want := range []string{`id="heatmap"`, "grant never used", "public.customers.birth_date",
			"public.customers.phone", "role support holds raw on class national_id"} {
			if !strings.Contains(out, want) {
				t.Errorf("HTML lacks %q", want)
			}
		}
		for _, banned := range []string{"<script", "http://", "https://", "<link"} {
			if strings.Contains(out, banned) {
				t.Errorf("HTML is not self-contained: has %q", banned)
			}
		}
	})
	t.Run("since excludes older data", func(t *testing.T) {
		// The statements are three hours old; a one-hour window sees none,
		// so every classified column is unread and no grant was used.
		code, out, _ := runReportCLI(t, append(base, "--format", "json", "--since", "1h")...)
		if code != 0 {
			t.Fatal(code)
		}
		r, _ := jsonFindings(t, out)
		if r.ColumnUses != 0 || r.DataFrom != nil {
			t.Errorf("1h window counted %d uses", r.ColumnUses)
		}
	})
}

func TestReportUsageErrors(t *testing.T) {
	spec := sqliteLedger(t)
	policy := writeReportPolicy(t)
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("version: 1\nroles:\n  x: { raw: [nope] }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		msg  string
	}{
		{"no store", []string{"--policy", policy}, "missing --usage-store"},
		{"no policy", []string{"--usage-store", spec}, "missing --policy"},
		{"bad format", []string{"--usage-store", spec, "--policy", policy, "--format", "pdf"}, "invalid --format"},
		{"bad since", []string{"--usage-store", spec, "--policy", policy, "--since", "-5h"}, "invalid --since"},
		{"bad store kind", []string{"--usage-store", "mysql://x", "--policy", policy}, "invalid --usage-store"},
		{"missing sqlite", []string{"--usage-store", "sqlite:/nonexistent/usage.db", "--policy", policy}, "cannot read --usage-store"},
		{"invalid policy", []string{"--usage-store", spec, "--policy", bad}, "invalid policy"},
		{"unknown flag", []string{"--usage-store", spec, "--policy", policy, "--colour"}, "unknown flag"},
		{"bad upstream", []string{"--usage-store", spec, "--policy", policy, "--upstream", "mysql://x"}, "invalid --upstream"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runReportCLI(t, tt.args...)
			if code != 2 || !strings.Contains(errOut, tt.msg) {
				t.Errorf("exit %d, stderr %q; want 2 and %q (stdout %q)", code, errOut, tt.msg, out)
			}
		})
	}
	t.Run("help", func(t *testing.T) {
		code, out, _ := runReportCLI(t, "--help")
		if code != 0 || !strings.Contains(out, "--usage-store") {
			t.Errorf("help: exit %d\n%s", code, out)
		}
	})
	t.Run("store down is a runtime error", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		code, _, errOut := runReportCLI(t, "--usage-store", "postgres://u:pw@"+addr+"/db?connect_timeout=5", "--policy", policy)
		if code != 1 || strings.Contains(errOut, "pw@") {
			t.Errorf("exit %d, stderr %q; want 1 without the password", code, errOut)
		}
	})
}

// TestReportPostgresStoreAndSampling keeps the ledger in PostgreSQL and
// samples an unclassified column whose name says nothing but whose values
// are e-mail addresses; no sampled value may appear in the report.
func TestReportPostgresStoreAndSampling(t *testing.T) {
	pg := testCluster(t)
	ctx := context.Background()
	emails := []string{"ann@example.com", "bob@example.org", "cy@example.net", "dee@example.com", "eve@example.io", "fay@example.de"}
	var values []string
	for i, e := range emails {
		values = append(values, fmt.Sprintf("(%d, '%s', '+49 30 %07d', 'note %d')", i, e, 1234560+i, i))
	}
	if _, err := pg.Psql(ctx, `CREATE TABLE public.customers (id int, contact text, phone text, note text);
		INSERT INTO public.customers VALUES `+strings.Join(values, ", ")); err != nil {
		t.Fatal(err)
	}
	url := pg.URL(pgcluster.Superuser, "", "postgres")
	read := func(column string) *usage.Statement {
		return &usage.Statement{Time: time.Now().Add(-time.Hour), Database: "postgres", User: "alice",
			Roles: []string{"alice", "analyst"}, Columns: []usage.ColumnUse{{Schema: "public", Table: "customers",
				Column: column, Clauses: usage.Output, Treatment: usage.Raw}}, Rows: 6, OK: true}
	}
	fillLedger(t, url, read("contact"), read("note"))
	policy := writeReportPolicy(t)
	code, out, errOut := runReportCLI(t, "--usage-store", url, "--policy", policy, "--upstream", url, "--format", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	r, keys := jsonFindings(t, out)
	want := append(slices.Clone(wantFindings), "unclassified_personal public.customers.contact email")
	slices.Sort(want)
	slices.Sort(keys)
	if !slices.Equal(keys, want) {
		t.Errorf("findings %q, want %q", keys, want)
	}
	for _, f := range r.Findings {
		ev := strings.Join(f.Evidence, "\n")
		switch f.Subject {
		case "public.customers.contact":
			if !strings.Contains(ev, "6 of 6 sampled values look like e-mail addresses") {
				t.Errorf("contact evidence %q", f.Evidence)
			}
		case "public.customers.phone":
			if !strings.Contains(ev, "6 of 6 sampled values look like phone numbers") {
				t.Errorf("phone evidence %q", f.Evidence)
			}
		}
	}
	for _, e := range emails {
		if strings.Contains(out, e) || strings.Contains(errOut, e) {
			t.Errorf("the report shows a sampled value %q", e)
		}
	}
	if strings.Contains(out, "+49 30") {
		t.Error("the report shows a sampled phone number")
	}
}

// chromiumPath finds headless Chromium; missing skips, or fails with
// PGVEIL_REQUIRE_ALL=1 (scripts/install-browser.sh installs it).
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("PGVEIL_REQUIRE_ALL") == "1" {
		t.Fatal("chromium is required (bash scripts/install-browser.sh)")
	}
	t.Skip("chromium not installed (bash scripts/install-browser.sh)")
	return ""
}

func runChromium(t *testing.T, bin string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	home := t.TempDir()
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
		"--disable-extensions", "--disable-background-networking", "--user-data-dir=" + filepath.Join(home, "profile")}
	cmd := exec.CommandContext(ctx, bin, append(base, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+home)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %v: %v\n%s", args, err, stderr.String())
	}
	return stdout.Bytes()
}

// TestReportHTMLRendersInChromium renders the HTML report in headless
// Chromium: the DOM must hold the heatmap and the findings, and the
// screenshot must show the heatmap's blue cells and the raw marks.
func TestReportHTMLRendersInChromium(t *testing.T) {
	bin := chromiumPath(t)
	spec := sqliteLedger(t)
	policy := writeReportPolicy(t)
	code, out, errOut := runReportCLI(t, "--usage-store", spec, "--policy", policy, "--format", "html")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	dir := t.TempDir()
	page := filepath.Join(dir, "report.html")
	if err := os.WriteFile(page, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	dom := string(runChromium(t, bin, "--dump-dom", "file://"+page))
	for _, want := range []string{`<table class="heatmap" id="heatmap">`, `<th class="role">support</th>`,
		`public.customers.phone`, `class="m raw"`, `grant never used`} {
		if !strings.Contains(dom, want) {
			t.Errorf("rendered DOM lacks %q", want)
		}
	}

	shot := filepath.Join(dir, "report.png")
	runChromium(t, bin, "--screenshot="+shot, "--window-size=1280,1400", "--hide-scrollbars", "file://"+page)
	if keep := os.Getenv("PGVEIL_KEEP_SCREENSHOT"); keep != "" {
		data, _ := os.ReadFile(shot)
		_ = os.WriteFile(keep, data, 0o644)
	}
	f, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() < 1000 || b.Dy() < 1000 {
		t.Fatalf("screenshot is %v", b)
	}
	blue, orange, colours := countPixels(img)
	// The heatmap's cells are blue (hsl 212); raw marks are orange.
	if blue < 2000 || orange < 50 || colours < 50 {
		t.Errorf("screenshot looks empty: %d blue pixels, %d orange, %d colours", blue, orange, colours)
	}
}

func countPixels(img image.Image) (blue, orange, colours int) {
	seen := map[uint32]bool{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			r, g, bl = r>>8, g>>8, bl>>8
			seen[r<<16|g<<8|bl] = true
			if bl > r+40 && bl > g+10 && bl > 120 {
				blue++
			}
			if r > 180 && g > 50 && g < 120 && bl < 60 {
				orange++
			}
		}
	}
	return blue, orange, len(seen)
}
