package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgveil/pgveil/usage"
)

// usagePolicy is shopPolicy with shop_support granted raw salary too,
// which it never reads; birth_date is read by no one and contacts.phone
// is not classified.
var usagePolicy = strings.Replace(shopPolicy, "shop_support: { raw: [email] }", "shop_support: { raw: [email, salary] }", 1)

// usageKey selects one ledger row.
type usageKey struct{ user, table, column, treatment string }

// usageTotals sums a store's rows by (user, table.column, treatment).
func usageTotals(t *testing.T, spec string) map[usageKey]usage.Counts {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	store, err := usage.Open(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	rows, err := store.Query(ctx, time.Now().Add(-24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	out := map[usageKey]usage.Counts{}
	for _, r := range rows {
		k := usageKey{r.User, r.Schema + "." + r.Table, r.Column, r.Treatment.String()}
		c := out[k]
		c.Add(&r.Counts)
		out[k] = c
	}
	return out
}

// TestUsageAndAudit runs analyst, support and dpo sessions with psql and
// pgx through the binary with the SQLite ledger and the audit log on, then
// checks the exact counts, the report's findings and the audit chain.
func TestUsageAndAudit(t *testing.T) {
	shopProxy(t)
	testStart := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := w.pg.PsqlDB(ctx, "shop", `CREATE TABLE IF NOT EXISTS contacts (id int PRIMARY KEY, phone text);
		INSERT INTO contacts VALUES (1, '+44 20 7946 0958') ON CONFLICT DO NOTHING;
		GRANT SELECT ON contacts TO shop_analyst, shop_support, shop_dpo;`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := w.pg.PsqlDB(ctx, "shop", "DROP TABLE IF EXISTS contacts"); err != nil {
			t.Error(err)
		}
	})
	dir := t.TempDir()
	policyFile := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policyFile, []byte(usagePolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	store := "sqlite:" + filepath.Join(dir, "usage.db")
	auditLog := filepath.Join(dir, "audit.log")
	cmd, port, logs := startBinary(t, "--upstream", fmt.Sprintf("postgres://shop_pgveil@127.0.0.1:%d/shop?sslmode=disable", w.pg.Port),
		"--policy", policyFile, "--usage-store", store, "--usage-flush", "200ms", "--audit-log", auditLog, "--admin-users", "shop_dpo")

	// analyst with psql: one masked read, one error, one refusal.
	env := append(cleanEnv(), "PGCONNECT_TIMEOUT=10")
	psql := func(user, sql string) (string, string, error) {
		return runCmd(ctx, env, psqlPath(), "-X", "-h", "127.0.0.1", "-p", fmt.Sprint(port), "-U", user, "-d", "shop", "-A", "-t", "-c", sql)
	}
	if out, stderr, err := psql("shop_analyst", "SELECT email FROM customers WHERE id = 1"); err != nil || strings.TrimSpace(out) != "a***@example.com" {
		t.Fatalf("analyst: %q %v %s", out, err, stderr)
	}
	if _, stderr, err := psql("shop_analyst", "SELECT email FROM customers WHERE nosuch = 1"); err == nil || !strings.Contains(stderr, "nosuch") {
		t.Fatalf("analyst error: %v %s", err, stderr)
	}
	if _, stderr, err := psql("shop_analyst", "EXPLAIN SELECT ssn FROM customers"); err == nil || !strings.Contains(stderr, "pgveil") {
		t.Fatalf("analyst refusal: %v %s", err, stderr)
	}
	// support with pgx, extended protocol: two executions.
	support, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=shop_support dbname=shop sslmode=disable application_name=support-app", port))
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []int{1, 2} {
		var email, ssn string
		if err := support.QueryRow(ctx, "SELECT email, ssn FROM customers WHERE id = $1", id).Scan(&email, &ssn); err != nil {
			t.Fatal(err)
		}
	}
	support.Close(ctx)
	// dpo with pgx: raw reads, and an unclassified phone column.
	dpo, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=shop_dpo dbname=shop sslmode=disable", port))
	if err != nil {
		t.Fatal(err)
	}
	rows, err := dpo.Query(ctx, "SELECT name, salary FROM customers ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	rows.Close()
	var phone string
	if err := dpo.QueryRow(ctx, "SELECT phone FROM contacts WHERE id = 1").Scan(&phone); err != nil {
		t.Fatal(err)
	}
	// Statements that take a known time, in both protocols: their audit
	// lines' durations (checked below) come from the relay's clock.
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
		if _, err := dpo.Exec(ctx, "SELECT pg_sleep(0.05)", mode); err != nil {
			t.Fatal(err)
		}
	}
	// SHOW USAGE on the console sees the counts before they are flushed.
	var consoleOut string
	waitFor(t, 5*time.Second, "SHOW USAGE", func() bool {
		out, _, err := runCmd(ctx, env, psqlPath(), "-X", "-h", "127.0.0.1", "-p", fmt.Sprint(port), "-U", "shop_dpo", "-d", "pgveil", "-A", "-c", "SHOW USAGE")
		consoleOut = out
		return err == nil && strings.Contains(out, "public.contacts|phone|raw|")
	})
	if !strings.Contains(consoleOut, "public.customers|email|masked|2|") {
		t.Errorf("SHOW USAGE:\n%s", consoleOut)
	}
	dpo.Close(ctx)

	// A graceful stop flushes the ledger and closes the audit log.
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v", err)
	}

	got := usageTotals(t, store)
	check := func(k usageKey, statements, ok, failed, rows int64, clause string) {
		t.Helper()
		c, found := got[k]
		if !found {
			t.Errorf("%v: no counts; have %v", k, got)
			return
		}
		if c.Statements != statements || c.OK != ok || c.Failed != failed || c.Rows != rows {
			t.Errorf("%v: statements %d ok %d failed %d rows %d; want %d %d %d %d", k, c.Statements, c.OK, c.Failed, c.Rows, statements, ok, failed, rows)
		}
		if clause == "output" && c.Output != statements || clause == "filter" && c.Filter != statements {
			t.Errorf("%v: %+v, want every statement in %s", k, c, clause)
		}
	}
	check(usageKey{"shop_analyst", "public.customers", "email", "masked"}, 2, 1, 1, 1, "output")
	check(usageKey{"shop_analyst", "public.customers", "ssn", "refused"}, 1, 0, 1, 0, "output")
	check(usageKey{"shop_support", "public.customers", "email", "raw"}, 2, 2, 0, 2, "output")
	check(usageKey{"shop_support", "public.customers", "ssn", "masked"}, 2, 2, 0, 2, "output")
	check(usageKey{"shop_support", "public.customers", "id", "raw"}, 2, 2, 0, 0, "filter")
	check(usageKey{"shop_dpo", "public.customers", "salary", "raw"}, 1, 1, 0, 2, "output")
	check(usageKey{"shop_dpo", "public.contacts", "phone", "raw"}, 1, 1, 0, 1, "output")
	for k := range got {
		if k.column == "birth_date" {
			t.Errorf("birth_date was never read, but the ledger has %v", k)
		}
	}
	if !strings.Contains(logs.String(), `msg="usage ledger"`) {
		t.Errorf("no usage ledger log line")
	}

	// The report finds the unused grant, the unread column and the
	// unclassified phone column.
	code, out, stderr := runBinary(t, "report", "--usage-store", store, "--policy", policyFile, "--format", "json")
	if code != 0 {
		t.Fatalf("report: %d %s", code, stderr)
	}
	var rep struct {
		Findings []struct{ Kind, Subject, Class string }
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("report JSON: %v\n%s", err, out)
	}
	want := map[string]bool{"unused_grant shop_support salary": false, "unread_column public.customers.birth_date": false, "unclassified_personal public.contacts.phone": false}
	for _, f := range rep.Findings {
		for k := range want {
			parts := strings.Fields(k)
			if f.Kind == parts[0] && f.Subject == parts[1] && (len(parts) < 3 || f.Class == parts[2]) {
				want[k] = true
			}
		}
	}
	for k, ok := range want {
		if !ok {
			t.Errorf("report lacks the finding %q: %+v", k, rep.Findings)
		}
	}

	// The audit log: one line per statement, chained, without values.
	code, out, stderr = runBinary(t, "audit", "verify", auditLog)
	if code != 0 {
		t.Fatalf("audit verify: %d %s %s", code, out, stderr)
	}
	data, err := os.ReadFile(auditLog)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"ada@example.com", "a***@example.com", "+44 20", "123-45-6789", "91234"} {
		if strings.Contains(string(data), secret) {
			t.Errorf("the audit log contains the value %q", secret)
		}
	}
	var sawRefused, sawError, sawSupport bool
	slept := 0
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		var line struct {
			Kind, User, SQL, Outcome, SQLState, Rule, Application string
			Columns                                               []struct{ Table, Column, Treatment string }
			Rows                                                  int64
			Time                                                  time.Time
			DurationUS                                            int64 `json:"duration_us"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		if line.Kind == "statement" && (line.Time.Before(testStart.Add(-time.Second)) || line.Time.After(time.Now()) || line.DurationUS < 0 || line.DurationUS > 60e6) {
			t.Errorf("audit line with time %v (test started %v), duration %d µs", line.Time, testStart, line.DurationUS)
		}
		if strings.Contains(line.SQL, "pg_sleep") {
			slept++
			if line.DurationUS < 50000 || line.DurationUS > 10e6 {
				t.Errorf("pg_sleep(0.05) took %d µs by the audit log", line.DurationUS)
			}
		}
		switch {
		case line.Outcome == "refused" && line.User == "shop_analyst":
			sawRefused = line.Rule != "" && strings.HasPrefix(line.SQL, "EXPLAIN SELECT ssn FROM customers")
		case line.Outcome == "error" && line.User == "shop_analyst":
			sawError = line.SQLState == "42703"
		case line.User == "shop_support" && strings.Contains(line.SQL, "SELECT email, ssn FROM customers WHERE id = $1"):
			sawSupport = line.Application == "support-app" && line.Rows == 1 && len(line.Columns) == 2 &&
				line.Columns[0].Column == "email" && line.Columns[0].Treatment == "raw" && line.Columns[1].Treatment == "masked"
		}
		if strings.Contains(line.SQL, "id = 1") {
			t.Errorf("audit SQL keeps a literal: %q", line.SQL)
		}
	}
	if !sawRefused || !sawError || !sawSupport || slept != 2 {
		t.Errorf("audit log: refused %v, error %v, support read %v, pg_sleep lines %d of 2\n%s", sawRefused, sawError, sawSupport, slept, data)
	}
}

// TestUsageSharedPostgresStore runs two proxies that count into one
// PostgreSQL store while pgbench runs through both: the store holds
// exactly the statements pgbench ran.
func TestUsageSharedPostgresStore(t *testing.T) {
	shopProxy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := w.pg.Psql(ctx, "DROP DATABASE IF EXISTS usagestore; CREATE DATABASE usagestore"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	policyFile := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policyFile, []byte(usagePolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	store := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/usagestore?sslmode=disable", w.pg.Port)
	script := filepath.Join(dir, "read.sql")
	if err := os.WriteFile(script, []byte("\\set id random(1, 2)\nSELECT email FROM customers WHERE id = :id;\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var cmds []*os.Process
	var ports []int
	for range 2 {
		cmd, port, _ := startBinary(t, "--upstream", fmt.Sprintf("postgres://shop_pgveil@127.0.0.1:%d/shop?sslmode=disable", w.pg.Port),
			"--policy", policyFile, "--usage-store", store, "--usage-flush", "100ms")
		cmds = append(cmds, cmd.Process)
		ports = append(ports, port)
	}
	const perClient = 300
	errs := make(chan error, 2)
	for _, port := range ports {
		go func() {
			out, n, err := pgbenchRun(ctx, t, port, "shop_analyst", "shop", "-f", script, "-c", "3", "-j", "1", "-t", fmt.Sprint(perClient))
			if err == nil && n != 3*perClient {
				err = fmt.Errorf("pgbench ran %d transactions\n%s", n, out)
			}
			errs <- err
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range cmds {
		if err := p.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Wait(); err != nil {
			t.Fatal(err)
		}
	}
	got := usageTotals(t, store)
	c := got[usageKey{"shop_analyst", "public.customers", "email", "masked"}]
	if want := int64(2 * 3 * perClient); c.Statements != want || c.OK != want || c.Rows != want {
		t.Fatalf("shared store: %d statements, %d ok, %d rows; want %d each", c.Statements, c.OK, c.Rows, want)
	}
}
