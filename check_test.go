package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgveil/pgveil/vaultkms"
)

// runCLI runs one pgveil command in-process and returns its exit code,
// standard output and standard error.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	code := run(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

// writeFile writes a file under t.TempDir and returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheckInvalidPolicy(t *testing.T) {
	for _, tc := range []struct {
		name, policy string
		want         []string
	}{
		{"yaml syntax", "version: 1\nclasses:\n\temail: { mask: email }\n", []string{"policy.yaml:3: found character that cannot start any token"}},
		{"unknown class", "version: 1\nclasses:\n  email: { mask: email }\ncolumns:\n  public.t.c: emial\n", []string{`policy.yaml:5: columns.public.t.c: unknown class "emial"`}},
		{"two problems", "version: 1\nclasses:\n  email: { mask: emale }\nroles:\n  a: { raw: [nope] }\n", []string{
			"policy.yaml:3: classes.email.mask:", `policy.yaml:5: roles.a.raw: unknown class "nope"`, "2 problems"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeFile(t, "policy.yaml", tc.policy)
			code, out, errs := runCLI(t, "check", "--policy", p)
			if code != exitUsage {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, exitUsage, out, errs)
			}
			for _, w := range tc.want {
				if !strings.Contains(errs, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errs)
				}
			}
		})
	}
}

func TestCheckUsage(t *testing.T) {
	if code, _, errs := runCLI(t, "check"); code != exitUsage || !strings.Contains(errs, "missing --policy") {
		t.Fatalf("no --policy: exit %d, %q", code, errs)
	}
	if code, _, errs := runCLI(t, "check", "--policy", filepath.Join(t.TempDir(), "none.yaml")); code != exitUsage || !strings.Contains(errs, "cannot read --policy") {
		t.Fatalf("missing file: exit %d, %q", code, errs)
	}
	p := writeFile(t, "policy.yaml", "version: 1\n")
	if code, _, errs := runCLI(t, "check", "--policy", p, "--upstream", "postgres://host/db"); code != exitUsage || !strings.Contains(errs, "account") {
		t.Fatalf("upstream without a user: exit %d, %q", code, errs)
	}
	t.Setenv("PGVEIL_POLICY", p)
	if code, out, errs := runCLI(t, "check"); code != exitOK || !strings.Contains(out, "0 errors") {
		t.Fatalf("PGVEIL_POLICY: exit %d\n%s%s", code, out, errs)
	}
}

func TestCheckWithoutUpstream(t *testing.T) {
	p := writeFile(t, "policy.yaml", `version: 1
classes:
  email: { mask: email }
  card:  { mask: "partial(last=4)" }
  spare: { mask: null }
columns:
  public.customers.email: email
  public.payments.card_number:
    class: card
    encrypted: { key: payments-card }
roles:
  analyst: {}
  billing: { decrypt: [card] }
`)
	code, out, errs := runCLI(t, "check", "--policy", p)
	if code != exitOK {
		t.Fatalf("exit %d\n%s%s", code, out, errs)
	}
	for _, w := range []string{
		"info: public.payments.card_number: declared encrypted (key payments-card, mode transit); decrypted for billing",
		"info: class spare is not used by any column",
		"0 errors, 0 warnings, 2 notes; 3 classes, 2 columns, 2 roles; schema not checked",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("report lacks %q:\n%s", w, out)
		}
	}
}

// checkSchema exercises every live finding of check.
const checkSchema = `
CREATE DATABASE app;
\connect app
CREATE ROLE pgveil LOGIN;
CREATE ROLE analyst NOLOGIN;
CREATE ROLE alice LOGIN IN ROLE analyst;
CREATE ROLE stranger LOGIN;
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, ssn text, salary numeric(10,2), opted_out bool);
CREATE TABLE customers_archive (archived date) INHERITS (customers);
CREATE TABLE events (id int, at date, ip text) PARTITION BY RANGE (at);
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE VIEW customer_names AS SELECT id, name FROM customers;
CREATE VIEW customer_emails AS SELECT id, email FROM customers;
CREATE MATERIALIZED VIEW salaries AS SELECT avg(salary) FROM customers;
CREATE VIEW event_ips AS SELECT ip FROM events;
CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE VIEW customer_contacts AS SELECT id, email, ssn FROM customers;
`

const checkPolicy = `version: 1
classes:
  email:  { mask: email }
  ssn:    { mask: deny }
  salary: { mask: "round(-3)" }
  ip:     { mask: "partial(first=3)" }
columns:
  public.customers.email: email
  public.customers.emial: email
  public.customers.ssn: ssn
  public.customers.salary: salary
  public.customers.name: salary
  public.nosuch.x: email
  public.customer_emails.email: email
  public.events.ip: ip
  public.events_2026.ip: ssn
  public.customer_contacts.email: email
roles:
  analyst: {}
  ghost: { raw: [email] }
row_filters:
  - { table: public.customers, roles: [analyst], where: "NOT opted_out" }
  - { table: public.customers, roles: [nobody], where: "NOT opted_ot" }
  - { table: public.gone, roles: [analyst], where: "true" }
`

func TestCheckLive(t *testing.T) {
	pg := testCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := pg.Psql(ctx, checkSchema); err != nil {
		t.Fatal(err)
	}
	p := writeFile(t, "policy.yaml", checkPolicy)
	code, out, errs := runCLI(t, "check", "--policy", p, "--upstream", pg.URL("pgveil", "", "app"))
	if code != exitError {
		t.Fatalf("exit %d, want %d\n%s%s", code, exitError, out, errs)
	}
	want := []string{
		"error: public.customers.emial: no such column",
		"error: public.nosuch.x: no such relation in database app",
		"error: public.customers.name: class salary: mask round(-3) does not apply to type text",
		`error: row_filters[1]: where "NOT opted_ot" on public.customers: ERROR: column "opted_ot" does not exist`,
		"error: row_filters[2]: table public.gone: no such relation in database app",
		"error: public.customers_archive inherits from classified table public.customers (INHERITS) but the policy does not classify its columns email, name, salary, ssn",
		"warning: view public.customer_names reads protected table public.customers but the policy classifies none of its columns",
		"warning: materialized view public.salaries reads protected table public.customers",
		"warning: view public.event_ips reads protected table public.events",
		"warning: roles.ghost: role ghost does not exist in the database",
		"warning: row_filters[1]: role nobody does not exist in the database",
		"info: public.events_2025 is a partition of classified table public.events",
		"warning: public.events_2026 is a partition of classified table public.events but classifies ip differently: reading public.events applies, for every row, the stricter of the two rules",
		"warning: view public.customer_contacts classifies some of its columns but not ssn, classified on the table it reads (public.customers): masked sessions that see that column masked are refused on it",
		"info: view public.customer_contacts reads protected public.customers and shows its unclassified column id as stored",
		"info: view public.customer_emails reads protected public.customers and shows its unclassified column id as stored",
		"info: login role stranger matches no policy role: through the proxy it sees every class masked (unknown_roles: mask)",
		"info: login role postgres is a superuser",
		"6 errors, 7 warnings",
		"checked against database app",
	}
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("report lacks %q", w)
		}
	}
	for _, bad := range []string{"warning: view public.customer_emails", "login role alice", "row_filters[0]"} {
		if strings.Contains(out, bad) {
			t.Errorf("report mentions %q, which is fine", bad)
		}
	}
	if t.Failed() {
		t.Logf("report:\n%s", out)
	}
	// Errors come first, and the report ends with the summary.
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if !strings.HasPrefix(lines[0], "error: ") || !strings.HasPrefix(lines[len(lines)-1], p+": ") {
		t.Errorf("report order:\n%s", out)
	}
	if !strings.Contains(errs, "the policy has errors") {
		t.Errorf("stderr: %q", errs)
	}

	// The same policy without its mistakes passes, with warnings.
	fixed := checkPolicy
	for _, drop := range []string{"  public.customers.emial: email\n", "  public.customers.name: salary\n", "  public.nosuch.x: email\n",
		"  - { table: public.customers, roles: [nobody], where: \"NOT opted_ot\" }\n", "  - { table: public.gone, roles: [analyst], where: \"true\" }\n"} {
		fixed = strings.Replace(fixed, drop, "", 1)
	}
	fixed = strings.Replace(fixed, "  public.events.ip: ip\n", "  public.events.ip: ip\n"+
		"  public.customers_archive.email: email\n  public.customers_archive.ssn: ssn\n  public.customers_archive.salary: salary\n", 1)
	p2 := writeFile(t, "policy.yaml", fixed)
	code, out, errs = runCLI(t, "check", "--policy", p2, "--upstream", pg.URL("pgveil", "", "app"))
	if code != exitOK || !strings.Contains(out, "0 errors") {
		t.Fatalf("fixed policy: exit %d\n%s%s", code, out, errs)
	}
	if !strings.Contains(out, "info: public.customers_archive inherits from classified table public.customers and is classified itself") {
		t.Errorf("fixed report:\n%s", out)
	}
}

func TestCheckUpstreamDown(t *testing.T) {
	p := writeFile(t, "policy.yaml", "version: 1\n")
	code, _, errs := runCLI(t, "check", "--policy", p, "--upstream", "postgres://pgveil@127.0.0.1:1/app?sslmode=disable&connect_timeout=2")
	if code != exitError || !strings.Contains(errs, "upstream") {
		t.Fatalf("exit %d, %q", code, errs)
	}
}

// checkKeysPolicy has two encrypted columns: one whose key the keyring
// holds, one whose key it lacks.
const checkKeysPolicy = `version: 1
classes:
  card: { mask: "partial(last=4)" }
columns:
  public.payments.card_number:
    class: card
    encrypted: { key: payments-card }
  public.payments.amount:
    class: card
    encrypted: { key: lost-key, mode: envelope }
  public.payments.iban:
    class: card
    encrypted: { key: payments-card, searchable: true }
roles:
  billing: { decrypt: [card] }
`

func TestCheckKeys(t *testing.T) {
	t.Setenv("VAULT_ADDR", "")
	keyring := filepath.Join(t.TempDir(), "keys.json")
	if _, err := vaultkms.InitKeyringFile(keyring, []string{"payments-card"}); err != nil {
		t.Fatal(err)
	}
	p := writeFile(t, "policy.yaml", checkKeysPolicy)

	// Without a key service the keys are not checked, and the summary
	// says so.
	code, out, errs := runCLI(t, "check", "--policy", p)
	if code != exitOK || !strings.Contains(out, "; keys not checked (give --keyring or --vault-addr)") {
		t.Fatalf("no key service: exit %d\n%s%s", code, out, errs)
	}

	// The missing key is an error naming the key and its column.
	code, out, errs = runCLI(t, "check", "--policy", p, "--keyring", keyring)
	if code != exitError {
		t.Fatalf("missing key: exit %d, want %d\n%s%s", code, exitError, out, errs)
	}
	if !strings.Contains(out, `error: key "lost-key" (column public.payments.amount): no such key in the key service`) ||
		!strings.Contains(out, "1 error, 0 warnings") || !strings.Contains(out, "; keys checked") {
		t.Errorf("missing key report:\n%s", out)
	}
	if strings.Contains(out, `key "payments-card"`) {
		t.Errorf("the present key is reported:\n%s", out)
	}

	// With the key added, the policy passes.
	if _, err := vaultkms.InitKeyringFile(keyring, []string{"lost-key"}); err != nil {
		t.Fatal(err)
	}
	if code, out, errs = runCLI(t, "check", "--policy", p, "--keyring", keyring); code != exitOK || !strings.Contains(out, "0 errors") {
		t.Fatalf("all keys present: exit %d\n%s%s", code, out, errs)
	}

	// A bad key service is a usage error.
	if code, _, errs = runCLI(t, "check", "--policy", p, "--keyring", filepath.Join(t.TempDir(), "none.json")); code != exitUsage || !strings.Contains(errs, "--keyring") {
		t.Fatalf("unreadable keyring: exit %d, %q", code, errs)
	}
}

func TestCheckEncryptedColumnTypes(t *testing.T) {
	t.Setenv("VAULT_ADDR", "")
	pg := testCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := pg.Psql(ctx, `
CREATE DATABASE app;
\connect app
CREATE ROLE pgveil LOGIN;
CREATE ROLE billing;
CREATE DOMAIN cipher AS text;
CREATE TABLE payments (id int PRIMARY KEY, card_number text, amount numeric(10,2), iban varchar(34), ref cipher, memo varchar);
`); err != nil {
		t.Fatal(err)
	}
	p := writeFile(t, "policy.yaml", `version: 1
classes:
  card: { mask: "partial(last=4)" }
  amount: { mask: "round(2)" }
columns:
  public.payments.card_number: { class: card, encrypted: { key: k } }
  public.payments.amount: { class: amount, encrypted: { key: k } }
  public.payments.iban: { class: card, encrypted: { key: k } }
  public.payments.ref: { class: card, encrypted: { key: k } }
  public.payments.memo: { class: card, encrypted: { key: k } }
roles:
  billing: { decrypt: all }
`)
	code, out, errs := runCLI(t, "check", "--policy", p, "--upstream", pg.URL("pgveil", "", "app"))
	if code != exitError {
		t.Fatalf("exit %d, want %d\n%s%s", code, exitError, out, errs)
	}
	for _, w := range []string{
		`error: public.payments.amount: encrypted column has type numeric(10,2): ciphertext is text, so the column must be text or varchar (ALTER TABLE "public"."payments" ALTER COLUMN "amount" TYPE text)`,
		"warning: public.payments.iban: encrypted column has type character varying(34): ciphertext is about 50 (transit) to 140 (envelope) characters longer",
		"1 error, 1 warning",
		"keys not checked",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("report lacks %q", w)
		}
	}
	for _, ok := range []string{"payments.card_number: encrypted column has", "payments.ref: encrypted column has", "payments.memo: encrypted column has"} {
		if strings.Contains(out, ok) {
			t.Errorf("report flags a text column: %q", ok)
		}
	}
	if t.Failed() {
		t.Logf("report:\n%s", out)
	}
}
