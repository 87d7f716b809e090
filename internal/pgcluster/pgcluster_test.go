package pgcluster

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgveil/pgveil/internal/testcert"
)

// startCluster starts a cluster for t, skipping t if PostgreSQL is not
// installed, and stops it when t ends.
func startCluster(t *testing.T, cfg Config) *Cluster {
	t.Helper()
	if _, err := FindBinDir(cfg.BinDir); err != nil {
		t.Skip(err)
	}
	cfg.Logf = t.Logf
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Error(err)
		}
	})
	return c
}

// psql runs c.Psql and fails t on error.
func psql(t *testing.T, c *Cluster, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := c.Psql(ctx, sql)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestLifecycle(t *testing.T) {
	c := startCluster(t, Config{Settings: map[string]string{
		"work_mem":     "8MB",
		"cluster_name": `pgveil's \test`,
	}})
	ctx := context.Background()

	if got := psql(t, c, "select 1"); got != "1" {
		t.Errorf("select 1 = %q, want 1", got)
	}
	if got := psql(t, c, "show work_mem"); got != "8MB" {
		t.Errorf("work_mem = %q, want 8MB", got)
	}
	if got := psql(t, c, "show cluster_name"); got != `pgveil's \test` {
		t.Errorf("cluster_name = %q, want %q", got, `pgveil's \test`)
	}
	for name, want := range map[string]string{"fsync": "off", "max_connections": "200", "listen_addresses": "127.0.0.1"} {
		if got := psql(t, c, "show "+name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	if got := psql(t, c, "select current_user; select 2"); got != "postgres\n2" {
		t.Errorf("two statements = %q, want %q", got, "postgres\n2")
	}
	if _, err := c.Psql(ctx, "select * from no_such_table"); err == nil || !strings.Contains(err.Error(), "no_such_table") {
		t.Errorf("psql error = %v, want one naming no_such_table", err)
	}

	// The server listens on TCP at URL, not only on the unix socket.
	url := c.URL("postgres", "", "postgres")
	if want := "postgres://postgres@127.0.0.1:" + strconv.Itoa(c.Port) + "/postgres?sslmode=disable"; url != want {
		t.Errorf("URL = %q, want %q", url, want)
	}
	out, err := exec.CommandContext(ctx, c.Bin("psql"), "-X", "-A", "-t", "-c", "select 3", url).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "3" {
		t.Errorf("psql over TCP = %q, %v; want 3", out, err)
	}

	psql(t, c, "create table t (x int); insert into t values (42)")
	if err := c.Kill(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Psql(ctx, "select 1"); err == nil {
		t.Error("psql succeeded against a killed server")
	}
	if err := c.StartAgain(ctx); err != nil {
		t.Fatal(err)
	}
	if got := psql(t, c, "select x from t"); got != "42" {
		t.Errorf("after crash, x = %q, want 42", got)
	}
	log, err := os.ReadFile(c.LogFile())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), "automatic recovery in progress") {
		t.Errorf("server log shows no crash recovery:\n%s", log)
	}

	if err := c.StopServer(); err != nil {
		t.Fatal(err)
	}
	if err := c.StopServer(); err != nil {
		t.Errorf("second StopServer: %v", err)
	}
	if err := c.StartAgain(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.StartAgain(ctx); err != nil {
		t.Errorf("StartAgain on a running server: %v", err)
	}
	if got := psql(t, c, "select count(*) from t"); got != "1" {
		t.Errorf("after restart, count = %q, want 1", got)
	}

	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.Dir); !os.IsNotExist(err) {
		t.Errorf("after Stop, stat %s: %v; want not exist", c.Dir, err)
	}
	if err := c.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if err := c.StartAgain(ctx); err == nil {
		t.Error("StartAgain after Stop succeeded")
	}
}

func TestGivenDirAndPort(t *testing.T) {
	if _, err := FindBinDir(""); err != nil {
		t.Skip(err)
	}
	dir := filepath.Join(t.TempDir(), "cluster")
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	c := startCluster(t, Config{
		Dir:   dir,
		Port:  port,
		Files: map[string][]byte{"sub/dir/hello.txt": []byte("hello")},
	})
	if c.Dir != dir || c.Port != port {
		t.Errorf("Dir, Port = %s, %d; want %s, %d", c.Dir, c.Port, dir, port)
	}
	if got := psql(t, c, "select pg_read_file('sub/dir/hello.txt')"); got != "hello" {
		t.Errorf("file = %q, want hello", got)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(c.DataDir, "PG_VERSION")); err != nil {
		t.Errorf("Stop removed a given Dir: %v", err)
	}
}

func TestLongDir(t *testing.T) {
	if _, err := FindBinDir(""); err != nil {
		t.Skip(err)
	}
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 100))
	c := startCluster(t, Config{Dir: dir})
	if strings.HasPrefix(c.SocketDir, dir) {
		t.Errorf("SocketDir %s is under the too long Dir", c.SocketDir)
	}
	if got := psql(t, c, "select 1"); got != "1" {
		t.Errorf("select 1 = %q, want 1", got)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.SocketDir); !os.IsNotExist(err) {
		t.Errorf("after Stop, stat %s: %v; want not exist", c.SocketDir, err)
	}
}

func TestStartErrors(t *testing.T) {
	if _, err := FindBinDir(""); err != nil {
		t.Skip(err)
	}
	ctx := context.Background()
	for name, cfg := range map[string]Config{
		"port setting":   {Settings: map[string]string{"port": "5432"}},
		"bad name":       {Settings: map[string]string{"work_mem = 1; x": "1"}},
		"file escapes":   {Files: map[string][]byte{"../x": nil}},
		"missing BinDir": {BinDir: t.TempDir()},
	} {
		c, err := Start(ctx, cfg)
		if err == nil {
			c.Stop()
			t.Errorf("%s: Start succeeded", name)
			continue
		}
		t.Logf("%s: %v", name, err)
	}
	// A taken port is reported, not retried, when Config.Port names it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := Start(ctx, Config{Port: ln.Addr().(*net.TCPAddr).Port}); err == nil || !strings.Contains(err.Error(), "could not bind") {
		t.Errorf("Start on a taken port: %v, want a bind error", err)
	}
	// A server that fails to start reports its log.
	_, err = Start(ctx, Config{Settings: map[string]string{"no_such_setting": "1"}})
	if err == nil || !strings.Contains(err.Error(), `unrecognized configuration parameter "no_such_setting"`) {
		t.Errorf("Start error = %v, want the server log's complaint", err)
	}
}

func TestTLS(t *testing.T) {
	ca, err := testcert.NewCA("pgveil test CA")
	if err != nil {
		t.Fatal(err)
	}
	serverCert, serverKey, err := ca.Issue("server", "127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	clientCert, clientKey, err := ca.Issue(Superuser)
	if err != nil {
		t.Fatal(err)
	}
	c := startCluster(t, Config{
		HBA: []string{
			"local all all trust",
			"hostssl all all 127.0.0.1/32 cert",
			"hostnossl all all 127.0.0.1/32 reject",
		},
		Settings: map[string]string{
			"ssl":           "on",
			"ssl_cert_file": "server.crt",
			"ssl_key_file":  "server.key",
			"ssl_ca_file":   "ca.crt",
		},
		Files: map[string][]byte{
			"server.crt": serverCert,
			"server.key": serverKey,
			"ca.crt":     ca.CertPEM,
		},
	})
	addr := net.JoinHostPort(c.Host, strconv.Itoa(c.Port))
	pair, err := tls.X509KeyPair(clientCert, clientKey)
	if err != nil {
		t.Fatal(err)
	}

	// With a client certificate, "cert" authentication succeeds.
	typ, body := sslStartup(t, addr, &tls.Config{
		RootCAs:      ca.Pool(),
		ServerName:   "127.0.0.1",
		Certificates: []tls.Certificate{pair},
	})
	if typ != 'R' || len(body) != 4 || binary.BigEndian.Uint32(body) != 0 {
		t.Errorf("with client certificate: got %q %q, want AuthenticationOk", typ, body)
	}
	// Without one, the server rejects the connection after the handshake.
	typ, body = sslStartup(t, addr, &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1"})
	if typ != 'E' || !strings.Contains(string(body), "certificate") {
		t.Errorf("without client certificate: got %q %q, want a certificate error", typ, body)
	}

	// libpq (OpenSSL) verifies the server by its IP address too.
	dir := t.TempDir()
	if err := testcert.WriteFiles(dir, map[string][]byte{
		"root.crt": ca.CertPEM, "client.crt": clientCert, "client.key": clientKey,
	}); err != nil {
		t.Fatal(err)
	}
	conninfo := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=verify-full sslrootcert=%s sslcert=%s sslkey=%s",
		c.Port, filepath.Join(dir, "root.crt"), filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key"))
	cmd := exec.Command(c.Bin("psql"), "-X", "-A", "-t", "-c", "select ssl from pg_stat_ssl where pid = pg_backend_pid()", conninfo)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10")
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "t" {
		t.Errorf("psql verify-full = %q, %v; want t", out, err)
	}
}

// sslStartup connects to addr, negotiates TLS with the PostgreSQL SSLRequest,
// sends a StartupMessage for user postgres and returns the first message
// the server answers with.
func sslStartup(t *testing.T, addr string, cfg *tls.Config) (byte, []byte) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 8), 80877103)); err != nil {
		t.Fatal(err)
	}
	answer := make([]byte, 1)
	if _, err := io.ReadFull(conn, answer); err != nil {
		t.Fatal(err)
	}
	if answer[0] != 'S' {
		t.Fatalf("SSLRequest answer = %q, want S", answer)
	}
	tc := tls.Client(conn, cfg)
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake: %v", err)
	}
	params := "user\x00postgres\x00database\x00postgres\x00\x00"
	msg := binary.BigEndian.AppendUint32(nil, uint32(8+len(params)))
	msg = binary.BigEndian.AppendUint32(msg, 3<<16)
	msg = append(msg, params...)
	if _, err := tc.Write(msg); err != nil {
		t.Fatal(err)
	}
	header := make([]byte, 5)
	if _, err := io.ReadFull(tc, header); err != nil {
		t.Fatalf("read startup answer: %v", err)
	}
	body := make([]byte, binary.BigEndian.Uint32(header[1:])-4)
	if _, err := io.ReadFull(tc, body); err != nil {
		t.Fatalf("read startup answer: %v", err)
	}
	return header[0], body
}

func TestQuote(t *testing.T) {
	for in, want := range map[string]string{
		"8MB":        `'8MB'`,
		"it's":       `'it''s'`,
		`a\b`:        `'a\\b'`,
		"two\nlines": `'two\nlines'`,
	} {
		if got := quote(in); got != want {
			t.Errorf("quote(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestCompareVersions(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"15", "9.6", 1},
		{"9.6", "10", -1},
		{"16", "16", 0},
		{"9.6", "9.5", 1},
	} {
		if got := compareVersions(tc.a, tc.b); got != tc.want {
			t.Errorf("compareVersions(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}

func TestURL(t *testing.T) {
	c := &Cluster{Host: Host, Port: 5433}
	for _, tc := range []struct{ user, password, db, want string }{
		{"alice", "s3cret", "app", "postgres://alice:s3cret@127.0.0.1:5433/app?sslmode=disable"},
		{"alice", "", "app", "postgres://alice@127.0.0.1:5433/app?sslmode=disable"},
		{"a@b", "p:/?#", "my db", "postgres://a%40b:p%3A%2F%3F%23@127.0.0.1:5433/my%20db?sslmode=disable"},
	} {
		if got := c.URL(tc.user, tc.password, tc.db); got != tc.want {
			t.Errorf("URL(%q, %q, %q) = %s, want %s", tc.user, tc.password, tc.db, got, tc.want)
		}
	}
}
