package integration

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgveil/pgveil/internal/pgcluster"
	"github.com/pgveil/pgveil/proxy"
)

// serverCode returns the SQLSTATE of a server (or proxy) error, or "".
func serverCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// activeCount counts server backends running query.
func activeCount(t *testing.T, pg *pgcluster.Cluster, appName string) string {
	t.Helper()
	n, err := pg.Psql(context.Background(), fmt.Sprintf("select count(*) from pg_stat_activity where application_name = '%s'", appName))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// mustWork checks that a new session through p works.
func mustWork(t *testing.T, p *proxyInstance) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, via(p).dsn("trust_user", "", "postgres", "disable"))
	if err != nil {
		t.Fatalf("new session after the fault: %v", err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, "select 41 + 1").Scan(&n); err != nil || n != 42 {
		t.Fatalf("new session after the fault: %v %d", err, n)
	}
}

func TestServerKilledMidQuery(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg, err := pgcluster.Start(ctx, pgcluster.Config{Dir: filepath.Join(t.TempDir(), "pg")})
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Stop()
	p, err := startProxy(pg.URL("", "", "postgres"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", p.port)

	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { _, err := conn.Exec(ctx, "select pg_sleep(60)"); errc <- err }()
	time.Sleep(300 * time.Millisecond)
	if err := pg.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		// An immediate shutdown makes the backend send its own FATAL
		// (57P01) when it can; otherwise the proxy reports 08006.
		if c := serverCode(err); c != "57P01" && c != "08006" {
			t.Fatalf("client saw %v, want SQLSTATE 57P01 or 08006", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("client never learned that the server died")
	}
	conn.Close(ctx)

	// While the server is down, new sessions get 08006 from the proxy.
	_, err = pgx.Connect(ctx, dsn)
	if c := serverCode(err); c != "08006" {
		t.Fatalf("connect to a dead upstream: %v, want 08006", err)
	}
	if err := pg.StartAgain(ctx); err != nil {
		t.Fatal(err)
	}
	conn, err = pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("after restart: %v", err)
	}
	conn.Close(ctx)
	waitFor(t, 5*time.Second, "sessions to close", func() bool { return p.srv.Sessions() == 0 })
}

// TestClientGoneCancelsServerWork closes clients mid-query and mid-COPY:
// the server's work is cancelled and its connection closed.
func TestClientGoneCancelsServerWork(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, tc := range []struct {
		name string
		run  func(conn *pgconn.PgConn) error
	}{
		{"mid-query", func(c *pgconn.PgConn) error {
			_, err := c.Exec(ctx, "select pg_sleep(60)").ReadAll()
			return err
		}},
		{"mid-copy-in", func(c *pgconn.PgConn) error {
			if _, err := c.Exec(ctx, "create temp table ci (v text)").ReadAll(); err != nil {
				return err
			}
			r, w := io.Pipe()
			go func() { fmt.Fprintln(w, "row 1"); fmt.Fprintln(w, "row 2") }() // then never ends
			_, err := c.CopyFrom(ctx, r, "copy ci from stdin")
			return err
		}},
		{"mid-copy-out", func(c *pgconn.PgConn) error {
			_, err := c.CopyTo(ctx, slowWriter{}, "copy (select g, repeat('x', 1000) from generate_series(1, 10000000) g) to stdout")
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			app := "gone-" + tc.name
			conn, err := pgconn.Connect(ctx, via(w.viaTLS).dsn("trust_user", "", "postgres", "require", "application_name="+app))
			if err != nil {
				t.Fatal(err)
			}
			go tc.run(conn)
			waitFor(t, 10*time.Second, "the server to be busy", func() bool {
				out, _ := w.pg.Psql(ctx, fmt.Sprintf("select count(*) from pg_stat_activity where application_name = '%s' and state = 'active'", app))
				return out == "1"
			})
			conn.Conn().Close() // vanish without Terminate
			waitFor(t, 10*time.Second, "the server backend to end", func() bool { return activeCount(t, w.pg, app) == "0" })
		})
	}
	mustWork(t, w.viaTLS)
}

// slowWriter makes a COPY TO client stall, as a slow reader would.
type slowWriter struct{}

func (slowWriter) Write(b []byte) (int, error) { time.Sleep(10 * time.Millisecond); return len(b), nil }

// TestGarbage sends malformed input at each stage; each gets a proper error
// and the proxy keeps serving.
func TestGarbage(t *testing.T) {
	p := w.viaPlain
	for _, tc := range []struct {
		name   string
		data   []byte
		before bool // sent before the startup message
		want   string
	}{
		{"random startup", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), true, "08P01"},
		{"huge startup length", []byte{0x7f, 0xff, 0xff, 0xff}, true, "08P01"},
		{"bad protocol version", []byte{0, 0, 0, 8, 0, 2, 0, 0}, true, "0A000"},
		{"bad message length", []byte{'Q', 0, 0, 0, 1}, false, "08P01"},
		{"oversized message", []byte{'Q', 0x7f, 0xff, 0xff, 0xff}, false, "08P01"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p.port))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(c)
			if !tc.before {
				startup := []byte("\x00\x03\x00\x00user\x00trust_user\x00database\x00postgres\x00\x00")
				msg := append([]byte{0, 0, 0, byte(len(startup) + 4)}, startup...)
				if _, err := c.Write(msg); err != nil {
					t.Fatal(err)
				}
				// Read until ReadyForQuery.
				for {
					typ, body := readRaw(t, br)
					if typ == 'Z' {
						break
					}
					if typ == 'E' {
						t.Fatalf("startup failed: %q", body)
					}
				}
			}
			if _, err := c.Write(tc.data); err != nil {
				t.Fatal(err)
			}
			typ, body := readRaw(t, br)
			if typ != 'E' || !strings.Contains(string(body), "C"+tc.want+"\x00") {
				t.Fatalf("got %q %q, want ErrorResponse %s", typ, body, tc.want)
			}
			if _, err := br.ReadByte(); err == nil {
				t.Fatal("connection still open after a fatal error")
			}
		})
	}
	mustWork(t, p)
}

func readRaw(t *testing.T, r *bufio.Reader) (byte, []byte) {
	t.Helper()
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(r, hdr); err != nil {
		t.Fatalf("read: %v", err)
	}
	n := int(hdr[1])<<24 | int(hdr[2])<<16 | int(hdr[3])<<8 | int(hdr[4])
	body := make([]byte, n-4)
	if _, err := io.ReadFull(r, body); err != nil {
		t.Fatalf("read: %v", err)
	}
	return hdr[0], body
}

// TestOversizedParameter sends a Bind larger than --max-message-size.
func TestOversizedParameter(t *testing.T) {
	p, err := startProxy(fmt.Sprintf("postgres://127.0.0.1:%d/postgres?sslmode=disable", w.pg.Port), func(c *proxy.Config) {
		c.MaxMessageSize = 1 << 20
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, via(p).dsn("trust_user", "", "postgres", "disable"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	err = conn.QueryRow(ctx, "select length($1::text)", strings.Repeat("z", 2<<20)).Scan(&n)
	if c := serverCode(err); c != "08P01" {
		t.Fatalf("got %v, want 08P01", err)
	}
	mustWork(t, p)
}

// TestSlowClientDoesNotStallOthers leaves one client not reading a large
// result while others keep working.
func TestSlowClientDoesNotStallOthers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	slow, err := pgconn.Connect(ctx, via(w.viaTLS).dsn("trust_user", "", "postgres", "require"))
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close(ctx)
	// Send a big query and never read the answer.
	if _, err := slow.Conn().Write([]byte("Q\x00\x00\x00\x3dselect repeat('x', 1000) from generate_series(1, 1000000)\x00")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	var wg sync.WaitGroup
	var failures atomic.Int32
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, via(w.viaTLS).dsn("trust_user", "", "postgres", "require"))
			if err != nil {
				failures.Add(1)
				return
			}
			defer conn.Close(ctx)
			for range 100 {
				var n int
				qctx, qc := context.WithTimeout(ctx, 5*time.Second)
				err := conn.QueryRow(qctx, "select 1").Scan(&n)
				qc()
				if err != nil {
					failures.Add(1)
					return
				}
			}
		}()
	}
	wg.Wait()
	if n := failures.Load(); n != 0 {
		t.Fatalf("%d clients failed while one client stalled", n)
	}
}

// buildBinary builds the pgveil command once per test run.
var buildBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "pgveil-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "pgveil")
	cmd := exec.Command("go", "build", "-o", bin, "..")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// startBinary runs "pgveil serve" with args and waits until it accepts.
func startBinary(t *testing.T, args ...string) (*exec.Cmd, int, *lockedBuffer) {
	t.Helper()
	return startBinaryEnv(t, nil, args...)
}

// startBinaryEnv is startBinary with extra environment variables.
func startBinaryEnv(t *testing.T, env []string, args ...string) (*exec.Cmd, int, *lockedBuffer) {
	t.Helper()
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	// Unless the test names one, the admin endpoints take any free port.
	base := []string{"serve", "--listen", fmt.Sprintf("127.0.0.1:%d", port)}
	if !slices.Contains(args, "--admin-listen") {
		base = append(base, "--admin-listen", "127.0.0.1:0")
	}
	cmd := exec.Command(bin, append(base, args...)...)
	cmd.Env = append(cleanEnv(), env...)
	logs := new(lockedBuffer)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_, _ = cmd.Process.Wait()
		if t.Failed() {
			t.Logf("pgveil output:\n%s", logs)
		}
	})
	waitFor(t, 10*time.Second, "pgveil to listen", func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return cmd, port, logs
}

// lockedBuffer collects a process's output; the test may read it while
// the process still writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestSIGTERMUnderLoad stops the binary while clients run queries and
// transactions: no query in flight fails, every client ends with 57P01,
// new connections are refused, and the process exits 0.
func TestSIGTERMUnderLoad(t *testing.T) {
	cmd, port, logs := startBinary(t, "--upstream", fmt.Sprintf("postgres://127.0.0.1:%d/postgres?sslmode=disable", w.pg.Port), "--shutdown-timeout", "20s")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=trust_user dbname=postgres sslmode=disable", port)
	var wg sync.WaitGroup
	var queries, shutdownEnds atomic.Int32
	var unexpected atomic.Value
	started := make(chan struct{}, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, dsn)
			if err != nil {
				unexpected.Store(err)
				return
			}
			defer conn.Close(ctx)
			started <- struct{}{}
			for {
				var err error
				if i%2 == 0 {
					_, err = conn.Exec(ctx, "select pg_sleep(0.05)")
				} else {
					// A transaction must run to its end even during shutdown.
					var tx pgx.Tx
					if tx, err = conn.Begin(ctx); err == nil {
						if _, err = tx.Exec(ctx, "select pg_sleep(0.2)"); err == nil {
							err = tx.Commit(ctx)
						}
					}
				}
				if err != nil {
					if serverCode(err) == "57P01" || strings.Contains(err.Error(), "57P01") {
						shutdownEnds.Add(1)
					} else {
						unexpected.Store(err)
					}
					return
				}
				queries.Add(1)
			}
		}()
	}
	for range 8 {
		<-started
	}
	time.Sleep(500 * time.Millisecond)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if err, _ := unexpected.Load().(error); err != nil {
		t.Fatalf("a client saw an unexpected error: %v\nlogs:\n%s", err, logs)
	}
	if shutdownEnds.Load() != 8 || queries.Load() == 0 {
		t.Fatalf("%d of 8 clients ended with 57P01 after %d queries", shutdownEnds.Load(), queries.Load())
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("pgveil exited with %v\n%s", err, logs)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("pgveil did not exit\n%s", logs)
	}
	if _, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
		t.Fatal("still accepting after shutdown")
	}
}

// TestShutdownTimeout ends a session still running when --shutdown-timeout
// passes with 57P01, and cancels its query on the server.
func TestShutdownTimeout(t *testing.T) {
	cmd, port, logs := startBinary(t, "--upstream", fmt.Sprintf("postgres://127.0.0.1:%d/postgres?sslmode=disable", w.pg.Port), "--shutdown-timeout", "1s")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=trust_user dbname=postgres sslmode=disable application_name=shutdown-timeout", port))
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { _, err := conn.Exec(ctx, "select pg_sleep(60)"); errc <- err }()
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if serverCode(err) != "57P01" {
			t.Fatalf("got %v, want 57P01", err)
		}
		if el := time.Since(start); el < 900*time.Millisecond || el > 10*time.Second {
			t.Fatalf("ended after %v, want about 1s", el)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("session not ended\n%s", logs)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, logs)
	}
	waitFor(t, 10*time.Second, "the server query to be cancelled", func() bool { return activeCount(t, w.pg, "shutdown-timeout") == "0" })
}

// TestFlagErrors checks that a bad flag or file is one line and exit code 2.
func TestFlagErrors(t *testing.T) {
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"serve", "--bogus"},
		{"serve"},
		{"serve", "--upstream", "mysql://x"},
		{"serve", "--upstream", "postgres://h/db", "--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"},
		{"serve", "--upstream", "postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent.pem"},
		{"serve", "--upstream", "postgres://h/db", "--log-format", "xml"},
		{"serve", "--upstream", "postgres://h/db", "--listen", "256.0.0.1:1"},
		{"nosuchcommand"},
	} {
		cmd := exec.Command(bin, args...)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("%v: exit %v, want 2", args, err)
		}
		if lines := strings.Count(strings.TrimSpace(string(out)), "\n") + 1; lines != 1 || !strings.HasPrefix(string(out), "pgveil: ") {
			t.Errorf("%v: output %q, want one line", args, out)
		}
	}
	// Environment variables set flags.
	cmd := exec.Command(bin, "serve")
	cmd.Env = append(cleanEnv(), "PGVEIL_UPSTREAM=postgres://h/db", "PGVEIL_LOG_FORMAT=xml")
	out, _ := cmd.CombinedOutput()
	if !strings.Contains(string(out), "invalid --log-format") {
		t.Errorf("PGVEIL_LOG_FORMAT not applied: %q", out)
	}
}
