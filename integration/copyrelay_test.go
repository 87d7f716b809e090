package integration

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgveil/pgveil/proxy"
)

// recordingSink keeps what the tests need of each statement event.
type recordingSink struct {
	mu  sync.Mutex
	evs []proxy.StatementEvent
}

func (r *recordingSink) Statement(ev *proxy.StatementEvent) {
	r.mu.Lock()
	r.evs = append(r.evs, proxy.StatementEvent{Normalized: ev.Normalized, Rows: ev.Rows, Outcome: ev.Outcome})
	r.mu.Unlock()
}

func (r *recordingSink) events() []proxy.StatementEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]proxy.StatementEvent(nil), r.evs...)
}

// TestRelayedCopySync: a relayed (not masked) session runs COPY FROM
// STDIN with the extended protocol the way libpq does (Parse, Bind,
// Execute and Sync in one go, then the data, CopyDone and another Sync).
// PostgreSQL ignores the first Sync, so the proxy must not wait for its
// answer: every later statement is recorded with its own row count, and
// the session is idle again (with the io_uring relay, it goes to the
// loop). Before, the statements after the COPY were recorded one answer
// late and the session never counted as idle again.
func TestRelayedCopySync(t *testing.T) {
	sink := &recordingSink{}
	p, conn := rawTrackedSession(t, sink)
	buf := make([]byte, 1<<16)
	send := func(msgs ...pgproto3.FrontendMessage) {
		t.Helper()
		if _, err := conn.Write(encodeAll(t, msgs...)); err != nil {
			t.Fatal(err)
		}
	}
	simple := func(sql string) {
		t.Helper()
		send(&pgproto3.Query{String: sql})
		if err := readToReady(conn, buf); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}

	simple("CREATE TEMP TABLE copy_t (x int)")
	for round := range 2 {
		send(&pgproto3.Parse{Query: "COPY copy_t FROM STDIN"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
		if err := readUntil(conn, buf, 'G'); err != nil {
			t.Fatal(err)
		}
		send(&pgproto3.CopyData{Data: []byte("1\n2\n")}, &pgproto3.CopyDone{}, &pgproto3.Sync{})
		if err := readToReady(conn, buf); err != nil {
			t.Fatalf("COPY %d: %v", round, err)
		}
		simple("SELECT generate_series(1, 3)")
		simple("SELECT 1")
	}
	// A COPY that the server fails (bad data) ends the same way.
	send(&pgproto3.Parse{Query: "COPY copy_t FROM STDIN"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if err := readUntil(conn, buf, 'G'); err != nil {
		t.Fatal(err)
	}
	send(&pgproto3.CopyData{Data: []byte("not a number\n")}, &pgproto3.CopyDone{}, &pgproto3.Sync{})
	if err := readToReady(conn, buf); err == nil || !strings.Contains(err.Error(), "ErrorResponse") {
		t.Fatalf("COPY of bad data: %v, want an ErrorResponse", err)
	} else if err := readToReady(conn, buf); err != nil {
		t.Fatalf("after the failed COPY: %v", err)
	}
	simple("SELECT generate_series(1, 4)")

	want := []struct {
		sql     string
		rows    int64
		outcome string
	}{
		{"CREATE TEMP TABLE copy_t (x int)", 0, "ok"},
		{"COPY copy_t FROM STDIN", 2, "ok"},
		{"SELECT generate_series(?, ?)", 3, "ok"},
		{"SELECT ?", 1, "ok"},
		{"COPY copy_t FROM STDIN", 2, "ok"},
		{"SELECT generate_series(?, ?)", 3, "ok"},
		{"SELECT ?", 1, "ok"},
		{"COPY copy_t FROM STDIN", 0, "error"},
		{"SELECT generate_series(?, ?)", 4, "ok"},
	}
	var got []proxy.StatementEvent
	deadline := time.Now().Add(5 * time.Second)
	for got = sink.events(); len(got) < len(want) && time.Now().Before(deadline); got = sink.events() {
		time.Sleep(10 * time.Millisecond)
	}
	var gotS, wantS []string
	for _, ev := range got {
		gotS = append(gotS, fmt.Sprintf("%s: %s %d", ev.Normalized, ev.Outcome, ev.Rows))
	}
	for _, w := range want {
		wantS = append(wantS, fmt.Sprintf("%s: %s %d", w.sql, w.outcome, w.rows))
	}
	if strings.Join(gotS, "\n") != strings.Join(wantS, "\n") {
		t.Fatalf("statements recorded:\n%s\nwant:\n%s", strings.Join(gotS, "\n"), strings.Join(wantS, "\n"))
	}
	if os.Getenv("PGVEIL_IO_URING") != "off" {
		// Idle again: the session goes to the io_uring loop.
		for deadline := time.Now().Add(5 * time.Second); p.srv.Stats().RingSessions != 1; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the session did not go to the io_uring loop after its COPYs (still counted busy)")
			}
		}
	}
}

// readUntil reads messages into buf until one of type typ; an
// ErrorResponse is an error.
func readUntil(r io.Reader, buf []byte, typ byte) error {
	for {
		if _, err := io.ReadFull(r, buf[:5]); err != nil {
			return err
		}
		got, n := buf[0], int(binary.BigEndian.Uint32(buf[1:5]))-4
		if n < 0 || n > len(buf) {
			return fmt.Errorf("message %q of %d bytes", got, n)
		}
		if _, err := io.ReadFull(r, buf[:n]); err != nil {
			return err
		}
		switch got {
		case 'E':
			return fmt.Errorf("ErrorResponse: %q", buf[:n])
		case typ:
			return nil
		}
	}
}
