package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgveil/pgveil/internal/pgcluster"
	"github.com/pgveil/pgveil/proxy"
)

// freeAddr returns a loopback address with a port free right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// httpGet fetches an admin endpoint.
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metricValue returns the value of the sample line that starts with name
// (labels included, e.g. `pgveil_queries_total{outcome="ok"}`), or -1.
func metricValue(body, name string) float64 {
	for _, line := range strings.Split(body, "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err == nil {
				return v
			}
		}
	}
	return -1
}

// pgbenchDB creates (once per call) a database initialised by pgbench.
func pgbenchDB(t *testing.T, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := w.pg.Psql(ctx, "DROP DATABASE IF EXISTS "+name+"; CREATE DATABASE "+name+" OWNER trust_user"); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(ctx, w.pg.Bin("pgbench"), "-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p", strconv.Itoa(w.pg.Port), "-U", "trust_user", name).CombinedOutput()
	if err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
}

// pgbenchRun runs pgbench against port and returns its output and the
// transactions it reports.
func pgbenchRun(ctx context.Context, t *testing.T, port int, user, db string, args ...string) (string, int, error) {
	t.Helper()
	base := []string{"-h", "127.0.0.1", "-p", strconv.Itoa(port), "-U", user, "-n"}
	cmd := exec.CommandContext(ctx, w.pg.Bin("pgbench"), append(append(base, args...), db)...)
	cmd.Env = cleanEnv()
	out, err := cmd.CombinedOutput()
	m := regexp.MustCompile(`number of transactions actually processed: (\d+)`).FindSubmatch(out)
	n := -1
	if m != nil {
		n, _ = strconv.Atoi(string(m[1]))
	}
	return string(out), n, err
}

// TestMetricsUnderPgbench runs a short pgbench through the binary and
// checks that the counters and histograms moved by what pgbench did.
func TestMetricsUnderPgbench(t *testing.T) {
	pgbenchDB(t, "opsbench")
	adminAddr := freeAddr(t)
	_, port, logs := startBinary(t, "--upstream", fmt.Sprintf("postgres://127.0.0.1:%d/opsbench?sslmode=disable", w.pg.Port), "--admin-listen", adminAddr)
	waitFor(t, 10*time.Second, "the admin endpoints", func() bool { c, _ := httpGet(t, "http://"+adminAddr+"/healthz"); return c == 200 })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, txns, err := pgbenchRun(ctx, t, port, "trust_user", "opsbench", "-S", "-c", "4", "-j", "2", "-T", "3")
	if err != nil || txns <= 0 {
		t.Fatalf("pgbench: %v\n%s\n%s", err, out, logs)
	}
	// pgbench -S: one simple Query per transaction, plus a few set-up
	// queries per connection.
	var body string
	waitFor(t, 5*time.Second, "the session ends in the metrics", func() bool {
		_, body = httpGet(t, "http://"+adminAddr+"/metrics")
		return metricValue(body, "pgveil_sessions_active") == 0
	})
	ok := metricValue(body, `pgveil_queries_total{outcome="ok"}`)
	if ok < float64(txns) || ok > float64(txns)+50 {
		t.Errorf("pgveil_queries_total{ok} = %v, pgbench reported %d transactions", ok, txns)
	}
	if n := metricValue(body, "pgveil_query_seconds_count"); n < float64(txns) {
		t.Errorf("pgveil_query_seconds_count = %v, want at least %d", n, txns)
	}
	if s := metricValue(body, "pgveil_query_seconds_sum"); s <= 0 {
		t.Errorf("pgveil_query_seconds_sum = %v", s)
	}
	// Each transaction sends at least a 5-byte header and its text, and
	// receives at least a row, a CommandComplete and a ReadyForQuery.
	if b := metricValue(body, "pgveil_client_bytes_total"); b < float64(txns*50) {
		t.Errorf("pgveil_client_bytes_total = %v for %d transactions", b, txns)
	}
	if b := metricValue(body, "pgveil_server_bytes_total"); b < float64(txns*40) {
		t.Errorf("pgveil_server_bytes_total = %v for %d transactions", b, txns)
	}
	if n := metricValue(body, `pgveil_sessions_ended_total{outcome="ok"}`); n < 4 {
		t.Errorf("sessions ended ok = %v, want ≥ 4", n)
	}
	// The session end lines carry the byte counts.
	if !regexp.MustCompile(`msg="session end".*bytes_in=\d{4,}.*bytes_out=\d{4,}.*queries=\d+`).MatchString(logs.String()) {
		t.Errorf("no session end line with bytes and queries:\n%s", logs)
	}
}

// TestReadyzFlipsWithUpstream stops and restarts a PostgreSQL of its own:
// /readyz follows it, then fails for good when shutdown starts.
func TestReadyzFlipsWithUpstream(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg, err := pgcluster.Start(ctx, pgcluster.Config{Dir: filepath.Join(t.TempDir(), "pg")})
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Stop()
	adminAddr := freeAddr(t)
	cmd, _, logs := startBinary(t, "--upstream", fmt.Sprintf("postgres://127.0.0.1:%d/postgres?sslmode=disable", pg.Port), "--admin-listen", adminAddr)
	readyz := func() (int, string) { return httpGet(t, "http://"+adminAddr+"/readyz") }
	waitFor(t, 10*time.Second, "/readyz 200", func() bool { c, _ := readyz(); return c == 200 })
	if err := pg.StopServer(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "/readyz 503 with the upstream stopped", func() bool {
		c, body := readyz()
		return c == 503 && strings.Contains(body, "upstream unreachable")
	})
	if err := pg.StartAgain(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "/readyz 200 with the upstream back", func() bool { c, _ := readyz(); return c == 200 })
	if c, _ := httpGet(t, "http://"+adminAddr+"/healthz"); c != 200 {
		t.Fatalf("/healthz: %d", c)
	}
	// The healthcheck subcommand (the container HEALTHCHECK) agrees.
	bin, _ := buildBinary()
	hc := exec.Command(bin, "healthcheck", "--admin-listen", adminAddr, "--path", "/readyz")
	hc.Env = cleanEnv()
	if out, err := hc.CombinedOutput(); err != nil || !strings.Contains(string(out), "ready") {
		t.Fatalf("pgveil healthcheck: %v %s", err, out)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, logs)
	}
	hc = exec.Command(bin, "healthcheck", "--admin-listen", adminAddr)
	hc.Env = cleanEnv()
	if out, err := hc.CombinedOutput(); err == nil {
		t.Fatalf("healthcheck of a stopped pgveil succeeded: %s", out)
	}
}

// reloadPolicy is shopPolicy with the email mask replaced.
func reloadPolicy(emailMask string) string {
	return strings.Replace(shopPolicy, "email:       { mask: email }", "email:       { mask: "+emailMask+" }", 1)
}

// TestHotReloadUnderLoad changes the policy while pgbench runs masked
// sessions: a SIGHUP, a file change picked up by the watcher and a
// console RELOAD each take effect for new statements of open sessions,
// a broken file keeps the old policy, and no pgbench session fails.
func TestHotReloadUnderLoad(t *testing.T) {
	shopProxy(t) // creates database shop and its roles
	dir := t.TempDir()
	policyFile := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policyFile, []byte(reloadPolicy("email")), 0o644); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, "masked.sql")
	if err := os.WriteFile(script, []byte("\\set id random(1, 1000000)\nSELECT email, ssn FROM customers WHERE id = :id;\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	adminAddr := freeAddr(t)
	cmd, port, logs := startBinary(t, "--upstream", fmt.Sprintf("postgres://shop_pgveil@127.0.0.1:%d/shop?sslmode=disable", w.pg.Port),
		"--policy", policyFile, "--admin-listen", adminAddr, "--reload-interval", "200ms", "--admin-users", "shop_dpo")
	waitFor(t, 20*time.Second, "/readyz", func() bool { c, _ := httpGet(t, "http://"+adminAddr+"/readyz"); return c == 200 })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// One long-lived masked session watches the value change.
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=shop_analyst dbname=shop sslmode=disable", port))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	email := func() string {
		t.Helper()
		var e string
		if err := conn.QueryRow(ctx, "SELECT email FROM customers WHERE id = 1").Scan(&e); err != nil {
			t.Fatalf("masked session after reload: %v\n%s", err, logs)
		}
		return e
	}
	if got := email(); got != "a***@example.com" {
		t.Fatalf("before reload: %q", got)
	}

	type benchResult struct {
		out  string
		txns int
		err  error
	}
	// Two pgbench runs: simple protocol, and prepared statements, which
	// the proxy prepares again under each new policy.
	bench := make(chan benchResult, 2)
	for _, mode := range []string{"simple", "prepared"} {
		go func() {
			out, n, err := pgbenchRun(ctx, t, port, "shop_analyst", "shop", "-M", mode, "-f", script, "-c", "2", "-j", "1", "-T", "6")
			bench <- benchResult{mode + ":\n" + out, n, err}
		}()
	}
	time.Sleep(time.Second)

	// 1. SIGHUP with a changed policy.
	if err := os.WriteFile(policyFile, []byte(reloadPolicy(`"constant('hidden')"`)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the SIGHUP reload", func() bool { return email() == "hidden" })

	// 2. A broken file: the old policy stays, the log and metric say why.
	if err := os.WriteFile(policyFile, []byte("version: 1\nclasses:\n  email: { mask: emial }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the failed reload", func() bool {
		_, body := httpGet(t, "http://"+adminAddr+"/metrics")
		return metricValue(body, `pgveil_reloads_total{result="error",trigger="file"}`) >= 1
	})
	if got := email(); got != "hidden" {
		t.Fatalf("after a broken reload the masked session sees %q, want the old policy's \"hidden\"", got)
	}
	if !strings.Contains(logs.String(), "reload failed; the previous settings stay") {
		t.Errorf("no log line for the failed reload:\n%s", logs)
	}

	// 3. A fixed file, picked up by the watcher without a signal.
	if err := os.WriteFile(policyFile, []byte(reloadPolicy(`"null"`)), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the file-watch reload", func() bool {
		var e *string
		if err := conn.QueryRow(ctx, "SELECT email FROM customers WHERE id = 1").Scan(&e); err != nil {
			t.Fatal(err)
		}
		return e == nil
	})

	total := 0
	for range 2 {
		r := <-bench
		if r.err != nil || r.txns <= 0 {
			t.Fatalf("pgbench across the reloads: %v\n%s", r.err, r.out)
		}
		if m := regexp.MustCompile(`number of failed transactions: (\d+)`).FindStringSubmatch(r.out); m != nil && m[1] != "0" {
			t.Fatalf("pgbench saw %s failed transactions across the reloads\n%s", m[1], r.out)
		}
		total += r.txns
	}
	if !strings.Contains(logs.String(), "statement prepared again under the reloaded policy") {
		t.Errorf("no prepared statement was prepared again")
	}
	_, body := httpGet(t, "http://"+adminAddr+"/metrics")
	for _, want := range []string{`pgveil_reloads_total{result="ok",trigger="signal"}`, `pgveil_reloads_total{result="ok",trigger="file"}`} {
		if metricValue(body, want) < 1 {
			t.Errorf("%s missing:\n%s", want, body)
		}
	}
	if metricValue(body, `pgveil_sessions_ended_total{outcome="error"}`) > 0 || metricValue(body, `pgveil_sessions_ended_total{outcome="upstream_gone"}`) > 0 {
		t.Errorf("sessions failed during the reloads:\n%s", body)
	}
	if metricValue(body, "pgveil_rewrites_total") < 10 {
		t.Errorf("pgveil_rewrites_total = %v", metricValue(body, "pgveil_rewrites_total"))
	}
	// The simple-protocol run sends a new text per query (ids drawn from
	// a million; with a few texts, the exact-text cache answers them all
	// once two sessions have seen each, and whether a template answers
	// any depends on the sessions' timing): statement templates (run as
	// prepared statements) answer them across the reloads.
	hits := metricValue(body, "pgveil_plan_cache_template_hits_total")
	if hits < 10 {
		t.Errorf("pgveil_plan_cache_template_hits_total = %v", hits)
	}
	t.Logf("%d masked pgbench transactions across three reloads, %v answered by a statement template", total, hits)
}

// TestReloadEndsUnmaskedSessions: a session relayed unchanged because its
// role saw everything raw is ended when a reload masks that role, rather
// than left reading what the new policy hides.
func TestReloadEndsUnmaskedSessions(t *testing.T) {
	shopProxy(t)
	dir := t.TempDir()
	policyFile := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policyFile, []byte(shopPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	adminAddr := freeAddr(t)
	cmd, port, logs := startBinary(t, "--upstream", fmt.Sprintf("postgres://shop_pgveil@127.0.0.1:%d/shop?sslmode=disable", w.pg.Port),
		"--policy", policyFile, "--admin-listen", adminAddr, "--reload-interval", "0")
	waitFor(t, 20*time.Second, "/readyz", func() bool { c, _ := httpGet(t, "http://"+adminAddr+"/readyz"); return c == 200 })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dpo, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=shop_dpo dbname=shop sslmode=disable", port))
	if err != nil {
		t.Fatal(err)
	}
	defer dpo.Close(ctx)
	var email string
	if err := dpo.QueryRow(ctx, "SELECT email FROM customers WHERE id = 1").Scan(&email); err != nil || email != "ada@example.com" {
		t.Fatalf("dpo before: %q %v", email, err)
	}
	demoted := strings.Replace(shopPolicy, "shop_dpo:     { raw: all }", "shop_dpo:     {}", 1)
	if err := os.WriteFile(policyFile, []byte(demoted), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the reload", func() bool { return strings.Contains(logs.String(), "unmasked sessions ended") })
	err = dpo.QueryRow(ctx, "SELECT email FROM customers WHERE id = 1").Scan(&email)
	if err == nil {
		t.Fatalf("the demoted session still reads %q", email)
	}
	again, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=shop_dpo dbname=shop sslmode=disable", port))
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close(ctx)
	if err := again.QueryRow(ctx, "SELECT email FROM customers WHERE id = 1").Scan(&email); err != nil || email != "a***@example.com" {
		t.Fatalf("dpo after reconnecting: %q %v", email, err)
	}
}

// TestMaxClientConn: the connection beyond the limit gets 53300, and a
// freed slot admits the next one.
func TestMaxClientConn(t *testing.T) {
	p, err := startProxy(fmt.Sprintf("postgres://127.0.0.1:%d/postgres?sslmode=disable", w.pg.Port), func(c *proxy.Config) { c.MaxClientConn = 2 })
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dsn := via(p).dsn("trust_user", "", "postgres", "disable")
	var conns []*pgx.Conn
	for range 2 {
		c, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	_, err = pgx.Connect(ctx, dsn)
	if serverCode(err) != "53300" {
		t.Fatalf("third connection: %v, want SQLSTATE 53300", err)
	}
	// psql shows the same error.
	_, stderr, err := runCmd(ctx, via(p).env("trust_user", "", "postgres", "disable"), psqlPath(), "-c", "select 1")
	if err == nil || !strings.Contains(stderr, "too many clients") {
		t.Fatalf("psql beyond the limit: %v %s", err, stderr)
	}
	conns[0].Close(ctx)
	waitFor(t, 5*time.Second, "a freed slot", func() bool {
		c, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return false
		}
		conns[0] = c
		return true
	})
	for _, c := range conns {
		var one int
		if err := c.QueryRow(ctx, "select 1").Scan(&one); err != nil {
			t.Fatal(err)
		}
		c.Close(ctx)
	}
}

// readFatal reads from a session's raw connection until an ErrorResponse
// arrives or the connection ends, and returns its SQLSTATE.
func readFatal(t *testing.T, conn net.Conn, within time.Duration) string {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(within))
	fe := pgproto3.NewFrontend(conn, io.Discard)
	for {
		msg, err := fe.Receive()
		if err != nil {
			return "closed: " + err.Error()
		}
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			return e.Code
		}
	}
}

// TestIdleTimeout: idle sessions are ended with 57P05, idle transactions
// with 25P03; a session that keeps working and a long query are not.
func TestIdleTimeout(t *testing.T) {
	p, err := startProxy(fmt.Sprintf("postgres://127.0.0.1:%d/postgres?sslmode=disable", w.pg.Port), func(c *proxy.Config) { c.IdleTimeout = 600 * time.Millisecond })
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dsn := via(p).dsn("trust_user", "", "postgres", "disable")
	connect := func() *pgx.Conn {
		c, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	idle, inTx, busy, slow := connect(), connect(), connect(), connect()
	defer busy.Close(ctx)
	defer slow.Close(ctx)
	if _, err := inTx.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	slowErr := make(chan error, 1)
	go func() { _, err := slow.Exec(ctx, "SELECT pg_sleep(2)"); slowErr <- err }()
	codes := make(chan [2]string, 1)
	go func() {
		codes <- [2]string{readFatal(t, idle.PgConn().Conn(), 5*time.Second), readFatal(t, inTx.PgConn().Conn(), 5*time.Second)}
	}()
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(150 * time.Millisecond) {
		if _, err := busy.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatalf("a working session was ended: %v", err)
		}
	}
	got := <-codes
	if got[0] != "57P05" || got[1] != "25P03" {
		t.Fatalf("idle session: %s, idle transaction: %s; want 57P05 and 25P03", got[0], got[1])
	}
	if err := <-slowErr; err != nil {
		t.Fatalf("a 2 s query under a 0.6 s idle timeout: %v", err)
	}
}

// TestStartupTimeout: clients that never finish the handshake are
// disconnected, while a normal session works meanwhile.
func TestStartupTimeout(t *testing.T) {
	p, err := startProxy(fmt.Sprintf("postgres://127.0.0.1:%d/postgres?sslmode=disable", w.pg.Port), func(c *proxy.Config) { c.StartupTimeout = 500 * time.Millisecond })
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	addr := fmt.Sprintf("127.0.0.1:%d", p.port)
	// Silent: connects and sends nothing.
	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	// Stalled: starts as a password user and never answers the request.
	stalled, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	start, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "password_user", "database": "postgres"}}).Encode(nil)
	if _, err := stalled.Write(start); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	mustWork(t, p)
	for name, c := range map[string]net.Conn{"silent": silent, "stalled": stalled} {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := io.Copy(io.Discard, c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("%s client still connected after 5 s", name)
		}
	}
	if d := time.Since(t0); d > 4*time.Second {
		t.Errorf("startup timeout took %v", d)
	}
}
