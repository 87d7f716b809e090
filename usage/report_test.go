package usage

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgveil/pgveil/rules"
)

const reportPolicy = `version: 1
classes:
  email:       { mask: email }
  national_id: { mask: "partial(last=4)" }
  birth_date:  { mask: "truncate(year)" }
  salary:      { mask: "round(-4)" }
  card:        { mask: "partial(last=4)" }
columns:
  public.customers.email: email
  public.customers.ssn: national_id
  public.customers.birth_date: birth_date
  public.customers.salary: salary
  public.payments.card_number:
    class: card
    encrypted: { key: payments-card }
roles:
  analyst: {}
  support:
    raw: [email, national_id]   # ticket 42
  billing: { decrypt: [card] }
  dpo:     { raw: all }
unknown_roles: mask
`

// reportRows is a month of synthetic use recorded through a real ledger.
func reportRows(t *testing.T, now time.Time) []Row {
	t.Helper()
	store := sqliteStore(t)
	l := newLedger(t, Config{Store: store})
	at := now.Add(-48 * time.Hour)
	rec := func(n int, user string, roles []string, rows int64, cols ...ColumnUse) {
		for range n {
			l.Record(&Statement{Time: at, Database: "app", User: user, Roles: roles, Application: "app", Columns: cols, Rows: rows, OK: true})
		}
	}
	rec(30, "alice", []string{"alice", "analyst"}, 10,
		col("customers", "email", Output, Masked), col("customers", "ssn", Filter, Masked),
		col("customers", "phone", Output, Raw), col("customers", "id", Join, Raw))
	rec(20, "bob", []string{"bob", "support"}, 1, col("customers", "email", Output|Filter, Raw))
	rec(5, "bob", []string{"bob", "support"}, 1, col("customers", "ssn", Output, Masked))
	rec(7, "carol", []string{"billing", "carol"}, 3, col("payments", "card_number", Output, Decrypted))
	rec(2, "dan", []string{"dan", "dpo"}, 100,
		col("customers", "email", Output, Raw), col("customers", "ssn", Output, Raw), col("customers", "salary", AggregateArg, Raw))
	rec(4, "eve", []string{"eve"}, 1, col("customers", "birth_date", Output, Refused))
	rec(3, "etl", []string{"etl"}, 0, col("customers", "birth_date", WriteTarget, Raw))
	// Outside the window: must not count.
	l.Record(&Statement{Time: now.Add(-40 * 24 * time.Hour), User: "old", Roles: []string{"old", "dpo"},
		Columns: []ColumnUse{col("payments", "card_number", Output, Raw)}, OK: true})
	if err := l.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	return queryAll(t, store)
}

func buildTestReport(t *testing.T) (*Report, *rules.Policy) {
	t.Helper()
	pol, err := rules.Parse("policy.yaml", []byte(reportPolicy))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	r, err := BuildReport(ReportConfig{Policy: pol, PolicyText: []byte(reportPolicy), PolicyName: "policy.yaml",
		Rows: reportRows(t, now), Since: now.Add(-720 * time.Hour), Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return r, pol
}

func findingKeys(r *Report) []string {
	var out []string
	for _, f := range r.Findings {
		out = append(out, f.Kind+" "+f.Subject+" "+f.Class)
	}
	return out
}

func TestReportFindings(t *testing.T) {
	r, _ := buildTestReport(t)
	want := []string{
		"unused_grant dpo birth_date",
		"unused_grant dpo card",
		"unused_grant support national_id",
		"unread_column public.customers.birth_date birth_date",
		"unclassified_personal public.customers.phone phone",
	}
	if got := findingKeys(r); !slices.Equal(got, want) {
		t.Fatalf("findings\n %q\nwant\n %q", got, want)
	}
	f := r.Findings[2]
	if !strings.Contains(strings.Join(f.Evidence, "\n"), "of class national_id: 0 raw or decrypted, 5 masked") {
		t.Errorf("support evidence: %q", f.Evidence)
	}
	if !strings.Contains(f.Diff, "-  support:\n-    raw: [email, national_id]   # ticket 42\n+  support: { raw: [email] }") {
		t.Errorf("support diff:\n%s", f.Diff)
	}
	unread := r.Findings[3]
	ev := strings.Join(unread.Evidence, "\n")
	if !strings.Contains(ev, "4 attempts were refused") || !strings.Contains(ev, "written by 3 statements") {
		t.Errorf("unread evidence: %q", unread.Evidence)
	}
	phone := r.Findings[4]
	if !strings.Contains(strings.Join(phone.Evidence, "\n"), "read 30 times by 1 user (roles: analyst), 300 rows returned") {
		t.Errorf("phone evidence: %q", phone.Evidence)
	}
	if r.Users != 6 || r.ColumnUses != 30*4+20+5+7+2*3+4+3 {
		t.Errorf("users %d, column uses %d", r.Users, r.ColumnUses)
	}
	// Per column: card_number read decrypted by billing only (the read
	// outside the window is not counted).
	for _, c := range r.Columns {
		if c.Column != "public.payments.card_number" {
			continue
		}
		if c.Reads["decrypted"] != 7 || c.Reads["raw"] != 0 || c.Rows != 21 || c.LastRawRead == nil {
			t.Errorf("card_number = %+v", c)
		}
		for _, rr := range c.ByRole {
			if (rr.Role == "billing") != (rr.Decrypted == 7) {
				t.Errorf("card_number by role %+v", rr)
			}
		}
	}
	if !slices.Equal(r.Roles, []string{"analyst", "billing", "dpo", "support", OtherRoles}) {
		t.Errorf("roles %q", r.Roles)
	}
}

// TestReportPolicyDiffApplies applies the combined diff with git apply and
// checks the result is a valid policy with the suggested grants.
func TestReportPolicyDiffApplies(t *testing.T) {
	r, _ := buildTestReport(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), []byte(reportPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "fix.diff"), []byte(r.PolicyDiff), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("git", "apply", "fix.diff")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("git apply: %v\n%s\ndiff:\n%s", err, out, r.PolicyDiff)
	}
	patched, err := os.ReadFile(filepath.Join(dir, "policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if string(patched) != r.SuggestedPolicy {
		t.Errorf("git apply gave\n%s\nSuggestedPolicy is\n%s", patched, r.SuggestedPolicy)
	}
	pol, err := rules.Parse("policy.yaml", patched)
	if err != nil {
		t.Fatalf("suggested policy does not parse: %v\n%s", err, patched)
	}
	treat := func(role, class string) rules.Treatment {
		g, err := pol.Grants([]string{role})
		if err != nil {
			t.Fatal(err)
		}
		return g.Treatment(class)
	}
	for _, c := range []struct {
		role, class string
		want        rules.Treatment
	}{
		{"support", "email", rules.TreatRaw},
		{"support", "national_id", rules.TreatMask},
		{"dpo", "email", rules.TreatRaw},
		{"dpo", "salary", rules.TreatRaw},
		{"dpo", "card", rules.TreatMask},
		{"dpo", "birth_date", rules.TreatMask},
		{"billing", "card", rules.TreatDecrypt},
	} {
		if got := treat(c.role, c.class); got != c.want {
			t.Errorf("%s on %s = %v, want %v", c.role, c.class, got, c.want)
		}
	}
	rule := pol.Column(rules.ColumnKey{Schema: "public", Table: "customers", Column: "phone"})
	if rule == nil || rule.Class.Name != "phone" || rule.Class.Mask.String() == "" {
		t.Errorf("phone not classified by the suggestion: %+v", rule)
	}
}

func TestCategoryByName(t *testing.T) {
	tests := map[string]string{
		"email": "email", "contact_email": "email", "EmailAddress": "email", "email_address": "email",
		"phone": "phone", "mobileNumber": "phone", "home_phone2": "phone", "tel": "phone",
		"ssn": "national_id", "national_id": "national_id", "passport_no": "national_id",
		"card_number": "card", "pan": "card", "cc_number": "card",
		"iban": "iban", "bank_account": "iban",
		"birth_date": "birth_date", "dob": "birth_date", "dateOfBirth": "birth_date",
		"street": "address", "zip": "address", "postcode": "address", "address2": "address",
		"ip": "ip_address", "client_ip": "ip_address", "ip_address": "ip_address", "ipv4": "ip_address",
		"id": "", "name": "", "zipper_count": "", "pantry": "", "description": "", "created_at": "", "shipping": "",
	}
	for name, want := range tests {
		got := ""
		if c := CategoryByName(name); c != nil {
			got = c.Name
		}
		if got != want {
			t.Errorf("CategoryByName(%q) = %q, want %q", name, got, want)
		}
	}
}

func TestValueCategory(t *testing.T) {
	tests := map[string]string{
		"ann@example.com":             "email",
		"4111 1111 1111 1111":         "card",
		"4111-1111-1111-1112":         "", // Fails Luhn, and too many digits for a phone.
		"5500005555555559":            "card",
		"DE89 3704 0044 0532 0130 00": "iban",
		"DE89 3704 0044 0532 0130 01": "",
		"GB82WEST12345698765432":      "iban",
		"123-45-6789":                 "national_id",
		"666-45-6789":                 "",
		"+49 30 1234567":              "phone",
		"(555) 123-4567":              "phone",
		"10.0.0.1":                    "ip_address",
		"10.0.0.0/8":                  "ip_address",
		"2001:db8::1":                 "ip_address",
		"hello":                       "",
		"42":                          "",
		"2024-01-31":                  "",
	}
	for v, want := range tests {
		if got := ValueCategory(v); got != want {
			t.Errorf("ValueCategory(%q) = %q, want %q", v, got, want)
		}
	}
	if c, n := ClassifyValues([]string{"a@b.io", "c@d.io", "e@f.io", "g@h.io", "x"}); c != "email" || n != 4 {
		t.Errorf("ClassifyValues = %q, %d; want email, 4", c, n)
	}
	if c, _ := ClassifyValues([]string{"a@b.io", "c@d.io", "x", "y", "z"}); c != "" {
		t.Errorf("ClassifyValues with 40%% emails = %q, want none", c)
	}
	if c, _ := ClassifyValues([]string{"a@b.io", "c@d.io"}); c != "" {
		t.Errorf("ClassifyValues of 2 values = %q, want none (too few)", c)
	}
}
