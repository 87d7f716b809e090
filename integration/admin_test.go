package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestAdminEndpoints checks /healthz, /readyz and /metrics of the binary:
// the metrics move with sessions, and readiness fails when shutdown starts.
func TestAdminEndpoints(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	adminAddr := ln.Addr().String()
	ln.Close()
	// The default --io-uring auto (unless the run is without the
	// io_uring relay) starts the loop while the flags are read.
	relay := "auto"
	if os.Getenv("PGVEIL_IO_URING") == "off" {
		relay = "off"
	}
	cmd, port, logs := startBinary(t, "--upstream", fmt.Sprintf("postgres://127.0.0.1:%d/postgres?sslmode=disable", w.pg.Port),
		"--admin-listen", adminAddr, "--shutdown-timeout", "10s", "--io-uring", relay)
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + adminAddr + path)
		if err != nil {
			t.Fatalf("GET %s: %v\n%s", path, err, logs)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitFor(t, 10*time.Second, "the admin endpoints", func() bool {
		c, err := net.Dial("tcp", adminAddr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("/healthz: %d", code)
	}
	if code, body := get("/readyz"); code != 200 {
		t.Fatalf("/readyz: %d %s", code, body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for range 3 {
		conn, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=trust_user dbname=postgres sslmode=disable", port))
		if err != nil {
			t.Fatal(err)
		}
		conn.Close(ctx)
	}
	// A session kept open while shutdown starts holds the drain, so
	// /readyz can be seen failing.
	held, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=trust_user dbname=postgres sslmode=disable", port))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := held.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	// The held session, idle in its transaction, is on the io_uring loop
	// when the relay runs.
	ring := "pgveil_io_uring_up 1\n"
	ringSessions := "pgveil_io_uring_sessions 1\n"
	if relay == "off" {
		ring, ringSessions = "pgveil_io_uring_up 0\n", "pgveil_io_uring_sessions 0\n"
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		_, body := get("/metrics")
		if strings.Contains(body, `pgveil_sessions_ended_total{outcome="ok"} 3`) &&
			strings.Contains(body, "pgveil_client_connections_total 4") &&
			strings.Contains(body, "pgveil_sessions_active 1") &&
			strings.Contains(body, "pgveil_upstream_connect_seconds_count 4") &&
			strings.Contains(body, ring) && strings.Contains(body, ringSessions) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics lacks what is expected (%q and %q among others):\n%s", ring, ringSessions, body)
		}
	}
	// --procs 1, and one scheduler core more for the io_uring loop when
	// it runs (set in that order: the loop's core must not be taken away).
	procs := "go_sched_gomaxprocs_threads 2"
	if os.Getenv("PGVEIL_IO_URING") == "off" {
		procs = "go_sched_gomaxprocs_threads 1"
	}
	if _, body := get("/metrics"); !strings.Contains(body, procs+"\n") {
		t.Errorf("/metrics lacks %q", procs)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "/readyz to fail during shutdown", func() bool {
		code, body := get("/readyz")
		return code == 503 && strings.Contains(body, "shutting down")
	})
	held.Close(ctx)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, logs)
	}
}

// TestReadyzUpstreamDown: /readyz fails while the upstream is unreachable.
func TestReadyzUpstreamDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	adminAddr := ln.Addr().String()
	ln.Close()
	startBinary(t, "--upstream", "postgres://127.0.0.1:1/postgres?sslmode=disable", "--admin-listen", adminAddr)
	var code int
	var body string
	waitFor(t, 10*time.Second, "/readyz", func() bool {
		resp, err := http.Get("http://" + adminAddr + "/readyz")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		code, body = resp.StatusCode, string(b)
		return true
	})
	if code != 503 || !strings.Contains(body, "upstream unreachable") {
		t.Fatalf("/readyz with a dead upstream: %d %q", code, body)
	}
}
