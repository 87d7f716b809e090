package integration

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgveil/pgveil/catalog"
	"github.com/pgveil/pgveil/internal/pgcluster"
	"github.com/pgveil/pgveil/internal/testcert"
	"github.com/pgveil/pgveil/proxy"
	"github.com/pgveil/pgveil/rules"
)

// Passwords of the test users; the users exist only in the throwaway cluster.
const (
	md5Password      = "md5-secret"
	scramPassword    = "scram-secret"
	cleartextPasswrd = "clear-secret"
)

// world is the shared fixture: one PostgreSQL and proxies in front of it.
type world struct {
	pg       *pgcluster.Cluster
	dir      string
	caFile   string       // CA certificate that signed the server and proxy certificates
	ca       *testcert.CA // the CA itself
	proxyTLS *tls.Config  // the proxy's client-facing certificate

	// viaTLS is a proxy whose upstream connection uses sslmode=verify-full.
	viaTLS *proxyInstance
	// viaPlain is a proxy whose upstream connection is not encrypted.
	viaPlain *proxyInstance
}

// proxyInstance is an in-process proxy on a loopback port.
type proxyInstance struct {
	srv  *proxy.Server
	ln   net.Listener
	port int
}

var w *world

// requireExternal turns missing external components (PostgreSQL, drivers)
// into failures rather than skips; .ci/run sets it.
var requireExternal = flag.Bool("require-all", os.Getenv("PGVEIL_REQUIRE_ALL") == "1", "fail instead of skipping when an external client is missing")

func TestMain(m *testing.M) {
	flag.Parse()
	code, err := setup(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration setup:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func setup(m *testing.M) (int, error) {
	if _, err := pgcluster.FindBinDir(""); err != nil {
		if *requireExternal {
			return 1, fmt.Errorf("PostgreSQL is required: %w", err)
		}
		fmt.Fprintln(os.Stderr, "integration: PostgreSQL not installed; skipping (run make test to install it)")
		return 0, nil
	}
	dir, err := os.MkdirTemp("", "pgveil-it-")
	if err != nil {
		return 1, err
	}
	defer os.RemoveAll(dir)
	_ = os.Chmod(dir, 0o755)
	w = &world{dir: dir}

	ca, err := testcert.NewCA("pgveil integration CA")
	if err != nil {
		return 1, err
	}
	w.ca = ca
	w.caFile = filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(w.caFile, ca.CertPEM, 0o644); err != nil {
		return 1, err
	}
	srvCert, srvKey, err := ca.Issue("postgres", "localhost", "127.0.0.1")
	if err != nil {
		return 1, err
	}
	proxyCert, proxyKey, err := ca.Issue("pgveil", "localhost", "127.0.0.1")
	if err != nil {
		return 1, err
	}
	cert, err := tls.X509KeyPair(proxyCert, proxyKey)
	if err != nil {
		return 1, err
	}
	w.proxyTLS = &tls.Config{Certificates: []tls.Certificate{cert}}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg, err := pgcluster.Start(ctx, pgcluster.Config{
		Dir: filepath.Join(dir, "pg"),
		HBA: []string{
			"local all all trust",
			"host shop all 127.0.0.1/32 trust",
			"host all postgres 127.0.0.1/32 trust",
			"host all trust_user 127.0.0.1/32 trust",
			"host all password_user 127.0.0.1/32 password",
			"host all md5_user 127.0.0.1/32 md5",
			"host all scram_user 127.0.0.1/32 scram-sha-256",
		},
		Settings: map[string]string{
			"ssl":             "on",
			"ssl_cert_file":   "server.crt",
			"ssl_key_file":    "server.key",
			"max_connections": "300",
		},
		Files: map[string][]byte{"server.crt": srvCert, "server.key": srvKey},
	})
	if err != nil {
		return 1, err
	}
	defer pg.Stop()
	w.pg = pg
	if _, err := pg.Psql(ctx, fmt.Sprintf(`
		CREATE ROLE trust_user LOGIN;
		SET password_encryption = 'md5';
		CREATE ROLE md5_user LOGIN PASSWORD '%s';
		CREATE ROLE password_user LOGIN PASSWORD '%s';
		SET password_encryption = 'scram-sha-256';
		CREATE ROLE scram_user LOGIN PASSWORD '%s';
		CREATE DATABASE app OWNER scram_user;
	`, md5Password, cleartextPasswrd, scramPassword)); err != nil {
		return 1, err
	}

	if w.viaTLS, err = startProxy(fmt.Sprintf("postgres://127.0.0.1:%d/postgres?sslmode=verify-full&sslrootcert=%s", pg.Port, w.caFile), nil); err != nil {
		return 1, err
	}
	defer w.viaTLS.close()
	if w.viaPlain, err = startProxy(fmt.Sprintf("postgres://127.0.0.1:%d/postgres?sslmode=disable", pg.Port), nil); err != nil {
		return 1, err
	}
	defer w.viaPlain.close()
	return m.Run(), nil
}

// startProxy runs an in-process proxy in front of upstream.
func startProxy(upstream string, mod func(*proxy.Config)) (*proxyInstance, error) {
	up, err := proxy.ParseUpstream(upstream)
	if err != nil {
		return nil, err
	}
	cfg := proxy.Config{Upstream: up, TLS: w.proxyTLS}
	// Like the binary's --io-uring (which reads PGVEIL_IO_URING too):
	// the io_uring relay unless PGVEIL_IO_URING is off; with on it must
	// be available.
	switch mode := os.Getenv("PGVEIL_IO_URING"); mode {
	case "off":
	case "on":
		cfg.IOUring = true
	default:
		cfg.IOUring = proxy.IOUringAvailable() == nil
	}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := proxy.New(cfg)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go srv.Serve(ln)
	return &proxyInstance{srv: srv, ln: ln, port: ln.Addr().(*net.TCPAddr).Port}, nil
}

func (p *proxyInstance) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = p.srv.Shutdown(ctx)
}

// target is somewhere a client can connect: the server itself or a proxy.
type target struct {
	name string
	port int
}

func direct() target              { return target{"direct", w.pg.Port} }
func via(p *proxyInstance) target { return target{"proxy", p.port} }

// dsn returns a libpq keyword/value connection string.
func (t target) dsn(user, password, db, sslmode string, extra ...string) string {
	s := fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=%s sslmode=%s connect_timeout=10", t.port, user, db, sslmode)
	if password != "" {
		s += " password=" + password
	}
	if sslmode == "verify-full" || sslmode == "verify-ca" {
		s += " sslrootcert=" + w.caFile
	}
	for _, e := range extra {
		s += " " + e
	}
	return s
}

// env returns libpq environment variables for t.
func (t target) env(user, password, db, sslmode string) []string {
	e := []string{
		"PGHOST=127.0.0.1", fmt.Sprintf("PGPORT=%d", t.port), "PGUSER=" + user,
		"PGDATABASE=" + db, "PGSSLMODE=" + sslmode, "PGCONNECT_TIMEOUT=10",
		"PGSSLROOTCERT=" + w.caFile, "PGCHANNELBINDING=disable",
	}
	if password != "" {
		e = append(e, "PGPASSWORD="+password)
	}
	return e
}

// needCommand returns the path of an external program, skipping the test
// (or failing it under -require-all) when it is missing.
func needCommand(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if *requireExternal {
			t.Fatalf("%s is required but not installed", name)
		}
		t.Skipf("%s not installed (make test installs it)", name)
	}
	return p
}

// needFile is needCommand for a file such as a driver jar.
func needFile(t *testing.T, path string) string {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		if *requireExternal {
			t.Fatalf("%s is required but missing", path)
		}
		t.Skipf("%s missing (make test installs it)", path)
	}
	return path
}

// psqlPath returns the psql of the cluster's PostgreSQL.
func psqlPath() string { return w.pg.Bin("psql") }

// runCmd runs a command with extra environment and returns stdout, stderr.
func runCmd(ctx context.Context, env []string, name string, args ...string) (string, string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(cleanEnv(), env...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

// cleanEnv is the process environment without PG* variables.
func cleanEnv() []string {
	var e []string
	for _, kv := range os.Environ() {
		// PGVEIL_IO_URING chooses the relay of the whole run (Makefile).
		if !strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "PGVEIL_IO_URING=") {
			e = append(e, kv)
		}
	}
	return e
}

// liveMasking is the tests' proxy.Masking: a policy file and a catalog
// kept fresh like the real one (every refresh interval, and soon after the
// proxy sees DDL). setPolicy stands for a policy reload.
type liveMasking struct {
	policy atomic.Pointer[rules.Policy]
	cat    *catalog.Catalog
}

func (m *liveMasking) Current() (*rules.Policy, *catalog.Snapshot) {
	return m.policy.Load(), m.cat.Current()
}
func (m *liveMasking) Invalidate()               { m.cat.Invalidate() }
func (m *liveMasking) setPolicy(p *rules.Policy) { m.policy.Store(p) }

// newLiveMasking loads policyFile, reads the catalog through connString,
// and keeps it fresh until stop is called.
func newLiveMasking(ctx context.Context, policyFile, connString string) (m *liveMasking, stop func(), err error) {
	pol, err := rules.Load(policyFile)
	if err != nil {
		return nil, nil, err
	}
	cat, err := catalog.New(catalog.Config{ConnString: connString})
	if err != nil {
		return nil, nil, err
	}
	if _, err := cat.Refresh(ctx); err != nil {
		return nil, nil, err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); cat.Run(runCtx, nil) }()
	m = &liveMasking{cat: cat}
	m.policy.Store(pol)
	return m, func() { cancel(); <-done }, nil
}
