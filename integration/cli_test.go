package integration

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestDemo runs "pgveil demo": it must print a psql line for each of its
// three roles, serve the sample data, show each role the customers'
// classified columns as its policy says, and remove everything on Ctrl-C.
func TestDemo(t *testing.T) {
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "demo", "--listen", "127.0.0.1:0")
	cmd.Env = cleanEnv()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	connRe := regexp.MustCompile(`psql "(host=127\.0\.0\.1 port=\d+ user=(\w+) dbname=demo)"`)
	dataRe := regexp.MustCompile(`data in (\S+)/data\)`)
	var dataDir string
	dsns := map[string]string{}
	var printed []string
	timeout := time.After(2 * time.Minute)
	for !strings.Contains(strings.Join(printed, "\n"), "Press Ctrl-C") {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("demo exited early:\n%s\n%s", strings.Join(printed, "\n"), stderr.String())
			}
			printed = append(printed, l)
			if m := dataRe.FindStringSubmatch(l); m != nil {
				dataDir = m[1]
			}
			if m := connRe.FindStringSubmatch(l); m != nil {
				dsns[m[2]] = m[1] + " sslmode=disable"
			}
		case <-timeout:
			t.Fatal("demo did not start")
		}
	}
	text := strings.Join(printed, "\n")
	if !strings.Contains(text, "SELECT name, email, ssn, birth_date, salary FROM customers LIMIT 3;") {
		t.Errorf("demo does not suggest the query:\n%s", text)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Customer 1 is Grace Lovelace (see demoSchema): grace1@example.com,
	// SSN 100007919, born 1960-01-20, salary 37907.
	for _, tc := range []struct {
		role, email, ssn, birth string
		salary                  float64
	}{
		{"analyst", "g***@example.com", "*****7919", "1960-01-01", 40000},
		{"support", "grace1@example.com", "*****7919", "1960-01-01", 40000},
		{"dpo", "grace1@example.com", "100007919", "1960-01-20", 37907},
	} {
		dsn, ok := dsns[tc.role]
		if !ok {
			t.Errorf("demo prints no psql command for %s:\n%s", tc.role, text)
			continue
		}
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatalf("%s: %v", tc.role, err)
		}
		var email, ssn, birth string
		var salary float64
		err = conn.QueryRow(ctx, "SELECT email, ssn, birth_date::text, salary::float8 FROM customers WHERE id = 1").Scan(&email, &ssn, &birth, &salary)
		if err != nil {
			t.Fatalf("%s: %v", tc.role, err)
		}
		if email != tc.email || ssn != tc.ssn || birth != tc.birth || salary != tc.salary {
			t.Errorf("%s sees %q %q %q %v, want %q %q %q %v", tc.role, email, ssn, birth, salary, tc.email, tc.ssn, tc.birth, tc.salary)
		}
		// Masking at the source: a filter on the raw value finds nothing.
		var n int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM customers WHERE ssn LIKE '1%'").Scan(&n); err != nil {
			t.Fatalf("%s: %v", tc.role, err)
		}
		if want := map[bool]int{true: 1000, false: 0}[tc.role == "dpo"]; n != want {
			t.Errorf("%s: %d SSNs start with 1, want %d", tc.role, n, want)
		}
		_, err = conn.Exec(ctx, "SELECT query_to_xml('SELECT ssn FROM customers', true, true, '')")
		if tc.role != "dpo" && serverCode(err) != "42501" {
			t.Errorf("%s: query_to_xml: %v, want SQLSTATE 42501", tc.role, err)
		}
		var customers, orders int
		if err := conn.QueryRow(ctx, "SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM orders)").Scan(&customers, &orders); err != nil {
			t.Fatalf("%s: %v", tc.role, err)
		}
		if customers != 1000 || orders != 5000 {
			t.Errorf("%s: demo data: %d customers, %d orders", tc.role, customers, orders)
		}
		conn.Close(ctx)
	}

	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	for range lines {
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("demo exit: %v\n%s", err, stderr.String())
	}
	if dataDir == "" {
		t.Fatal("demo did not say where its data is")
	}
	if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
		t.Fatalf("demo left %s behind (%v)", dataDir, err)
	}
}

// runBinary runs the pgveil binary and returns its exit code and output.
func runBinary(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	return runBinaryEnv(t, nil, args...)
}

// runBinaryEnv is runBinary with extra environment variables (nil: the
// test's own environment).
func runBinaryEnv(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stdout, stderr, err := runCmd(ctx, env, bin, args...)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, stdout, stderr
	case errors.As(err, &ee):
		return ee.ExitCode(), stdout, stderr
	}
	t.Fatalf("pgveil %v: %v", args, err)
	return 0, "", ""
}

// cliDatabase creates (afresh) a database in the shared cluster with the
// given SQL run in it, and returns the upstream URL for it as postgres.
func cliDatabase(t *testing.T, name, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := w.pg.Psql(ctx, fmt.Sprintf("DROP DATABASE IF EXISTS %s;\nCREATE DATABASE %s;", name, name)); err != nil {
		t.Fatal(err)
	}
	if _, err := w.pg.PsqlDB(ctx, name, sql); err != nil {
		t.Fatal(err)
	}
	return w.pg.URL("postgres", "", name)
}

// createRoles creates roles that may already exist from an earlier run in
// the same cluster.
func createRoles(names ...string) string {
	var b strings.Builder
	for _, n := range names {
		fmt.Fprintf(&b, "DO $$ BEGIN CREATE ROLE %s LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;\n", n)
	}
	return b.String()
}

const cliSchema = `
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, ssn text, salary numeric(10,2));
INSERT INTO customers VALUES (1, 'Ada', 'ada@example.com', '123-45-6789', 91234.56);
GRANT SELECT ON customers TO cli_analyst, cli_dpo;
`

func TestCLICheck(t *testing.T) {
	upstream := cliDatabase(t, "cli_check", createRoles("cli_analyst", "cli_dpo")+cliSchema)
	dir := t.TempDir()
	policy := filepath.Join(dir, "policy.yaml")
	write := func(s string) {
		if err := os.WriteFile(policy, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// A typo in a column name is an error finding: exit 1.
	write(`version: 1
classes:
  email: { mask: email }
  ssn:   { mask: deny }
columns:
  public.customers.emial: email
  public.customers.ssn: ssn
roles:
  cli_analyst: {}
  cli_dpo: { raw: all }
unknown_roles: reject
`)
	code, out, errs := runBinary(t, "check", "--policy", policy, "--upstream", upstream)
	if code != 1 || !strings.Contains(out, "error: public.customers.emial: no such column") || !strings.Contains(out, "1 error") {
		t.Errorf("typo'd column: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}

	// Fixed, the policy passes.
	write(strings.Replace(mustRead(t, policy), "emial", "email", 1))
	code, out, errs = runBinary(t, "check", "--policy", policy, "--upstream", upstream)
	if code != 0 || !strings.Contains(out, "0 errors") || !strings.Contains(out, "checked against database cli_check") {
		t.Errorf("fixed policy: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}

	// Invalid YAML is a usage error: exit 2, with file:line.
	write("version: 1\nclasses:\n\temail: { mask: email }\n")
	code, out, errs = runBinary(t, "check", "--policy", policy)
	if code != 2 || !strings.Contains(errs, policy+":3: ") {
		t.Errorf("invalid YAML: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}

	// The environment works like the flags.
	write("version: 1\n")
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, errs, err := runCmd(ctx, []string{"PGVEIL_POLICY=" + policy}, bin, "check"); err != nil || !strings.Contains(out, "0 errors") {
		t.Errorf("PGVEIL_POLICY: %v\n%s%s", err, out, errs)
	}
}

func TestCLIHarden(t *testing.T) {
	upstream := cliDatabase(t, "cli_harden", createRoles("cli_analyst", "cli_dpo")+cliSchema)
	policy := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(policy, []byte(`version: 1
classes:
  email: { mask: email }
  ssn:   { mask: deny }
columns:
  public.customers.email: email
  public.customers.ssn: ssn
roles:
  cli_analyst: {}
  cli_dpo: { raw: all }
unknown_roles: reject
`), 0o644); err != nil {
		t.Fatal(err)
	}
	code, script, errs := runBinary(t, "harden", "--policy", policy, "--upstream", upstream)
	if code != 0 {
		t.Fatalf("harden: exit %d\n%s", code, errs)
	}
	if !strings.Contains(script, `GRANT SELECT ("id", "name", "email", "salary") ON TABLE "public"."customers" TO "cli_analyst";`) {
		t.Errorf("harden output lacks the column grant:\n%s", script)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := w.pg.PsqlDB(ctx, "cli_harden", script); err != nil {
		t.Fatalf("psql: %v\nscript:\n%s", err, script)
	}

	// Connecting directly (over the unix socket: pg_hba lets only some
	// users in over TCP), the masked role cannot read the denied column.
	dsn := func(user string) string {
		return fmt.Sprintf("host=%s port=%d user=%s dbname=cli_harden", w.pg.SocketDir, w.pg.Port, user)
	}
	conn, err := pgx.Connect(ctx, dsn("cli_analyst"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, sql := range []string{
		"SELECT ssn FROM customers",
		"SELECT query_to_xml('SELECT ssn FROM customers', true, true, '')",
		"CREATE TEMP TABLE t (x int)",
	} {
		if _, err := conn.Exec(ctx, sql); serverCode(err) != "42501" {
			t.Errorf("cli_analyst: %s: %v, want SQLSTATE 42501", sql, err)
		}
	}
	var email string
	if err := conn.QueryRow(ctx, "SELECT email FROM customers").Scan(&email); err != nil || email != "ada@example.com" {
		t.Errorf("cli_analyst: non-denied columns: %q %v", email, err)
	}
	dpo, err := pgx.Connect(ctx, dsn("cli_dpo"))
	if err != nil {
		t.Fatal(err)
	}
	defer dpo.Close(ctx)
	var ssn string
	if err := dpo.QueryRow(ctx, "SELECT ssn FROM customers").Scan(&ssn); err != nil || ssn != "123-45-6789" {
		t.Errorf("cli_dpo: %q %v", ssn, err)
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
