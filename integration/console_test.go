package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
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

// TestAdminConsole logs into the console with psql and pgx as admins
// (trust and password logins, authenticated by the upstream) and as a
// non-admin, and runs every command.
func TestAdminConsole(t *testing.T) {
	shopProxy(t)
	dir := t.TempDir()
	policyFile := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policyFile, []byte(shopPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd, port, logs := startBinary(t, "--upstream", fmt.Sprintf("postgres://shop_pgveil@127.0.0.1:%d/shop?sslmode=disable", w.pg.Port),
		"--policy", policyFile, "--reload-interval", "0", "--admin-users", "trust_user,password_user", "--admin-auth-database", "postgres")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// A masked session to be listed.
	analyst, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=shop_analyst dbname=shop sslmode=disable application_name=listed-app", port))
	if err != nil {
		t.Fatal(err)
	}
	defer analyst.Close(ctx)
	if _, err := analyst.Exec(ctx, "SELECT email FROM customers"); err != nil {
		t.Fatal(err)
	}

	psql := func(user, password, command string) (string, string, error) {
		env := append(cleanEnv(), "PGPASSWORD="+password, "PGCONNECT_TIMEOUT=10")
		return runCmd(ctx, env, psqlPath(), "-X", "-h", "127.0.0.1", "-p", fmt.Sprint(port), "-U", user, "-d", "pgveil",
			"-v", "ON_ERROR_STOP=1", "-A", "-F", "|", "-c", command)
	}
	mustPsql := func(command string) string {
		t.Helper()
		out, stderr, err := psql("trust_user", "", command)
		if err != nil {
			t.Fatalf("%s: %v\n%s", command, err, stderr)
		}
		return out + stderr
	}

	out := mustPsql("SHOW SESSIONS")
	if !strings.Contains(out, "id|user|database|application_name|client_addr|client_tls|server_tls|mode|state|started|duration|bytes_in|bytes_out|queries") {
		t.Errorf("SHOW SESSIONS header:\n%s", out)
	}
	if !strings.Contains(out, "|shop_analyst|shop|listed-app|") || !strings.Contains(out, "|masked|idle|") {
		t.Errorf("SHOW SESSIONS does not list the masked session:\n%s", out)
	}
	if !strings.Contains(out, "|trust_user|pgveil|") || !strings.Contains(out, "|console|active|") {
		t.Errorf("SHOW SESSIONS does not list the console session:\n%s", out)
	}
	out = mustPsql("show stats;")
	for _, want := range []string{"sessions_open|2", "plan_cache_misses|", "client_bytes|", "reloads_ok|0", "policy_hash|"} {
		if !strings.Contains(out, want) {
			t.Errorf("SHOW STATS lacks %q:\n%s", want, out)
		}
	}
	out = mustPsql("SHOW POLICY")
	for _, want := range []string{"file|" + policyFile + "|hash ", "column|public.customers.email|class email", "role|shop_support|raw: email; decrypt: -", "class|national_id|mask partial("} {
		if !strings.Contains(out, want) {
			t.Errorf("SHOW POLICY lacks %q:\n%s", want, out)
		}
	}
	if out := mustPsql("SHOW HELP"); !strings.Contains(out, "RELOAD|") || !strings.Contains(out, "SHUTDOWN|") {
		t.Errorf("SHOW HELP:\n%s", out)
	}
	for cmd, want := range map[string]string{
		"SHOW USAGE":     "no usage ledger is configured",
		"DROP TABLE foo": "unknown command",
	} {
		_, stderr, err := psql("trust_user", "", cmd)
		if err == nil || !strings.Contains(stderr, want) {
			t.Errorf("%s: %v %q, want an error containing %q", cmd, err, stderr, want)
		}
	}

	// pgx: the simple protocol works, the extended protocol is refused.
	adm, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=trust_user dbname=pgveil sslmode=disable", port))
	if err != nil {
		t.Fatal(err)
	}
	var name, value string
	if err := adm.QueryRow(ctx, "SHOW STATS", pgx.QueryExecModeSimpleProtocol).Scan(&name, &value); err != nil || name != "sessions_open" {
		t.Errorf("pgx SHOW STATS: %q %q %v", name, value, err)
	}
	if err := adm.QueryRow(ctx, "SHOW STATS").Scan(&name, &value); serverCode(err) != "0A000" {
		t.Errorf("extended protocol on the console: %v, want 0A000", err)
	}
	var one string
	if err := adm.QueryRow(ctx, "SHOW HELP", pgx.QueryExecModeSimpleProtocol).Scan(&name, &one); err != nil {
		t.Errorf("the console after a refused extended query: %v", err)
	}
	adm.Close(ctx)

	// A non-admin is refused; a password admin is authenticated by the
	// upstream, and a wrong password gets the server's error.
	if _, stderr, err := psql("shop_analyst", "", "SHOW STATS"); err == nil || !strings.Contains(stderr, "may not use the admin console") {
		t.Errorf("non-admin: %v %s", err, stderr)
	}
	if _, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=shop_analyst dbname=pgveil sslmode=disable", port)); serverCode(err) != "42501" {
		t.Errorf("non-admin with pgx: %v, want 42501", err)
	}
	if out, stderr, err := psql("password_user", cleartextPasswrd, "SHOW STATS"); err != nil || !strings.Contains(out, "sessions_open") {
		t.Errorf("password admin: %v %s %s", err, out, stderr)
	}
	if _, stderr, err := psql("password_user", "wrong", "SHOW STATS"); err == nil || !strings.Contains(stderr, "password authentication failed") {
		t.Errorf("password admin with a wrong password: %v %s", err, stderr)
	}

	// RELOAD: a changed policy is applied and reported, a broken one is
	// refused with F0000 and the old one stays.
	changed := strings.Replace(shopPolicy, "shop_support: { raw: [email] }", "shop_support: { raw: [email, salary] }", 1)
	if err := os.WriteFile(policyFile, []byte(changed), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := mustPsql("RELOAD"); !strings.Contains(out, "replaced by") {
		t.Errorf("RELOAD:\n%s", out)
	}
	if out := mustPsql("SHOW POLICY"); !strings.Contains(out, "role|shop_support|raw: email,salary") {
		t.Errorf("SHOW POLICY after RELOAD:\n%s", out)
	}
	if err := os.WriteFile(policyFile, []byte("version: 1\nroles: [\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	adm, err = pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=trust_user dbname=pgveil sslmode=disable", port))
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close(ctx)
	if _, err := adm.Exec(ctx, "RELOAD", pgx.QueryExecModeSimpleProtocol); serverCode(err) != "F0000" {
		t.Errorf("RELOAD of a broken policy: %v, want F0000", err)
	}
	if out := mustPsql("SHOW STATS"); !strings.Contains(out, "reloads_ok|1") || !strings.Contains(out, "reloads_failed|1") || !strings.Contains(out, "last_reload_error|policy:") {
		t.Errorf("SHOW STATS after the reloads:\n%s", out)
	}
	var salary string
	if err := analyst.QueryRow(ctx, "SELECT salary::text FROM customers WHERE id = 1").Scan(&salary); err != nil || salary != "90000.00" {
		t.Errorf("analyst after a broken reload: %q %v", salary, err)
	}

	// SHUTDOWN stops the proxy gracefully.
	if out := mustPsql("SHUTDOWN"); !strings.Contains(out, "SHUTDOWN") {
		t.Errorf("SHUTDOWN:\n%s", out)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SHUTDOWN: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("pgveil still running after SHUTDOWN")
	}
	if !regexp.MustCompile(`msg="console command" .*user=trust_user .*command=SHUTDOWN`).MatchString(logs.String()) {
		t.Errorf("no log line for the console command")
	}
}

// TestConfigFile runs serve from a --config file: its settings apply,
// the environment overrides them, and a bad file is a one-line error
// with its line number and exit code 2.
func TestConfigFile(t *testing.T) {
	dir := t.TempDir()
	listen := freeAddr(t)
	cfg := filepath.Join(dir, "pgveil.yaml")
	err := os.WriteFile(cfg, []byte(fmt.Sprintf(`# pgveil settings
listen: %s
upstream: postgres://127.0.0.1:%d/postgres?sslmode=disable
admin-listen: %s
max-client-conn: 1
admin-users: [trust_user, postgres]
`, listen, w.pg.Port, freeAddr(t))), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := func(env ...string) (*exec.Cmd, *lockedBuffer) {
		cmd := exec.Command(bin, "serve", "--config", cfg)
		cmd.Env = append(cleanEnv(), env...)
		logs := new(lockedBuffer)
		cmd.Stdout, cmd.Stderr = logs, logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
		return cmd, logs
	}
	connect := func() (*pgx.Conn, error) {
		return pgx.Connect(ctx, fmt.Sprintf("postgres://trust_user@%s/postgres?sslmode=disable", listen))
	}
	countConns := func() int {
		var conns []*pgx.Conn
		defer func() {
			for _, c := range conns {
				c.Close(ctx)
			}
		}()
		// The sessions of the previous round may take a moment to end.
		waitFor(t, 5*time.Second, "a free slot", func() bool {
			c, err := connect()
			if err == nil {
				conns = append(conns, c)
			}
			return err == nil
		})
		for range 3 {
			c, err := connect()
			if err != nil {
				if serverCode(err) != "53300" {
					t.Fatalf("unexpected error: %v", err)
				}
				break
			}
			conns = append(conns, c)
		}
		return len(conns)
	}
	cmd, logs := start()
	waitFor(t, 10*time.Second, "pgveil from the config file", func() bool {
		c, err := connect()
		if err == nil {
			c.Close(ctx)
		}
		return err == nil
	})
	if n := countConns(); n != 1 {
		t.Errorf("max-client-conn: 1 in the file admitted %d sessions\n%s", n, logs)
	}
	// admin-users as a YAML list reached the console.
	adm, err := pgx.Connect(ctx, fmt.Sprintf("postgres://trust_user@%s/pgveil?sslmode=disable", listen))
	if err != nil {
		t.Fatalf("console for an admin-users entry from the file: %v", err)
	}
	adm.Close(ctx)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	_ = cmd.Wait()

	cmd, logs = start("PGVEIL_MAX_CLIENT_CONN=3")
	waitFor(t, 10*time.Second, "pgveil with an environment override", func() bool {
		c, err := connect()
		if err == nil {
			c.Close(ctx)
		}
		return err == nil
	})
	if n := countConns(); n != 3 {
		t.Errorf("PGVEIL_MAX_CLIENT_CONN=3 over a file saying 1 admitted %d sessions\n%s", n, logs)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	_ = cmd.Wait()

	for _, tc := range []struct{ body, want string }{
		{"listen: 127.0.0.1:0\nlisen: x\n", `pgveil.yaml:2: unknown setting "lisen"`},
		{"max-client-conn: many\n", `pgveil.yaml:1: invalid value "many" for max-client-conn`},
		{"listen: [a, b]\n", `pgveil.yaml:1: listen takes one value, not a list`},
		{"- listen\n", `pgveil.yaml:1: want a mapping of settings`},
	} {
		if err := os.WriteFile(cfg, []byte(tc.body), 0o644); err != nil {
			t.Fatal(err)
		}
		code, _, stderr := runBinary(t, "serve", "--config", cfg)
		if code != 2 || !strings.Contains(stderr, tc.want) || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Errorf("config %q: exit %d, stderr %q; want 2 and %q", tc.body, code, stderr, tc.want)
		}
	}
}

// TestTLSReload replaces the proxy's certificate files and checks that a
// SIGHUP makes new handshakes use the new certificate.
func TestTLSReload(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	issue := func(cn string) {
		cert, key, err := w.ca.Issue(cn, "localhost", "127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(certFile, cert, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(keyFile, key, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	issue("first-cert")
	cmd, port, _ := startBinary(t, "--upstream", fmt.Sprintf("postgres://127.0.0.1:%d/postgres?sslmode=disable", w.pg.Port),
		"--tls-cert", certFile, "--tls-key", keyFile, "--reload-interval", "0")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(w.ca.CertPEM)
	peer := func() string {
		t.Helper()
		cfg, err := pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=trust_user dbname=postgres sslmode=verify-full", port))
		if err != nil {
			t.Fatal(err)
		}
		var cn string
		cfg.TLSConfig = &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", VerifyConnection: func(cs tls.ConnectionState) error {
			cn = cs.PeerCertificates[0].Subject.CommonName
			return nil
		}}
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		conn.Close(ctx)
		return cn
	}
	if cn := peer(); cn != "first-cert" {
		t.Fatalf("before reload: %q", cn)
	}
	held, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=trust_user dbname=postgres sslmode=require", port))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close(ctx)
	issue("second-cert")
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the new certificate", func() bool { return peer() == "second-cert" })
	var one int
	if err := held.QueryRow(ctx, "select 1").Scan(&one); err != nil {
		t.Fatalf("a TLS session across the reload: %v", err)
	}
}
