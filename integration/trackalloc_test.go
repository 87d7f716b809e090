package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgveil/pgveil/proxy"
)

// countingSink counts the statement events it gets and remembers whether
// any lacked what a relayed pgbench-like query must carry.
type countingSink struct {
	n   atomic.Int64
	bad atomic.Int64
}

func (s *countingSink) Statement(ev *proxy.StatementEvent) {
	s.n.Add(1)
	if ev.Fingerprint == "" || len(ev.Uses) == 0 || ev.Outcome != "ok" || ev.Rows != 1 {
		s.bad.Add(1)
	}
}

// TestTrackedRelayAllocatesNothing: a tracked session that passes
// unchanged (a role that sees everything raw) records each statement
// without allocating, for simple queries whose constants change every
// time (the facts cache is keyed by the normalized text) and for
// unnamed Parse/Bind/Execute/Sync (pgbench -M extended). Allocations
// would mean garbage collections, which stop the io_uring loop.
func TestTrackedRelayAllocatesNothing(t *testing.T) {
	sink := &countingSink{}
	_, conn := rawTrackedSession(t, sink)

	// Requests encoded beforehand; answers read into one buffer.
	var simple, extended [][]byte
	for i := range 8 {
		sql := fmt.Sprintf("SELECT email FROM customers WHERE id = %d", 1+i%2)
		simple = append(simple, encodeAll(t, &pgproto3.Query{String: sql}))
		extended = append(extended, encodeAll(t, &pgproto3.Parse{Query: sql}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}))
	}
	buf := make([]byte, 1<<16)
	var failed error
	trip := func(req []byte) {
		if _, err := conn.Write(req); err != nil {
			failed = err
			return
		}
		if err := readToReady(conn, buf); err != nil {
			failed = err
		}
	}
	// The io_uring loop hands its sessions' events to the sink from
	// another goroutine, within milliseconds: the counts are compared
	// once they have arrived.
	sent := int64(0)
	arrived := func(step string) {
		t.Helper()
		waitFor(t, 5*time.Second, step+": every statement recorded", func() bool { return sink.n.Load() == sent })
	}
	for _, tc := range []struct {
		name string
		reqs [][]byte
	}{{"simple", simple}, {"extended", extended}} {
		for i := range 100 {
			trip(tc.reqs[i%len(tc.reqs)])
		}
		sent += 100
		arrived(tc.name + " warm-up")
		const n = 2000
		before := sink.n.Load()
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		for i := range n {
			trip(tc.reqs[i%len(tc.reqs)])
		}
		runtime.ReadMemStats(&m1)
		if failed != nil {
			t.Fatal(failed)
		}
		sent += n
		arrived(tc.name)
		if got := sink.n.Load() - before; got != n {
			t.Fatalf("%s: %d statements recorded, want %d", tc.name, got, n)
		}
		if allocs := float64(m1.Mallocs-m0.Mallocs) / n; allocs > 0.05 {
			t.Errorf("%s: %.2f allocations per tracked statement, want 0", tc.name, allocs)
		}
	}
	if b := sink.bad.Load(); b > 0 {
		t.Fatalf("%d events without fingerprint, columns, outcome ok or one row", b)
	}
}

// rawTrackedSession starts a proxy enforcing shopPolicy on database shop
// with sink recording statements, and opens a session as shop_dpo (who
// sees everything raw: relayed unchanged) over a bare connection, ready
// for raw protocol messages. Both end with the test.
func rawTrackedSession(t *testing.T, sink proxy.StatementSink) (*proxyInstance, net.Conn) {
	t.Helper()
	p := trackedProxy(t, sink)
	return p, protocolSession(t, p, "shop_dpo")
}

// trackedProxy starts a proxy enforcing shopPolicy on database shop with
// sink recording statements; it ends with the test.
func trackedProxy(t *testing.T, sink proxy.StatementSink) *proxyInstance {
	t.Helper()
	shopProxy(t) // creates the shop schema
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	file := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(file, []byte(shopPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	mk, stop, err := newLiveMasking(ctx, file, w.pg.URL("shop_pgveil", "", "shop"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	p, err := startProxy(fmt.Sprintf("postgres://127.0.0.1:%d/shop?sslmode=disable", w.pg.Port), func(c *proxy.Config) {
		c.Masking = mk
		c.Statements = sink
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.close)
	return p
}

// protocolSession opens a session of user on database shop through p and
// returns the connection after its first ReadyForQuery.
func protocolSession(t *testing.T, p *proxyInstance, user string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p.port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(time.Minute))
	fe := pgproto3.NewFrontend(conn, conn)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": user, "database": "shop"}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			t.Fatalf("startup: %s %s", e.Code, e.Message)
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			return conn
		}
	}
}

func encodeAll(t *testing.T, msgs ...pgproto3.FrontendMessage) []byte {
	t.Helper()
	var out []byte
	for _, m := range msgs {
		var err error
		if out, err = m.Encode(out); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// readToReady reads messages into buf until a ReadyForQuery; an
// ErrorResponse is an error.
func readToReady(r io.Reader, buf []byte) error { return readUntil(r, buf, 'Z') }

// shapeSink records the normalized text and the columns (with clauses)
// of each statement event.
type shapeSink struct {
	mu  sync.Mutex
	evs []string
}

func (s *shapeSink) Statement(ev *proxy.StatementEvent) {
	cols := make([]string, 0, len(ev.Uses))
	for _, u := range ev.Uses {
		cols = append(cols, fmt.Sprintf("%s.%s:%v", u.Column.Table, u.Column.Column, u.Clauses))
	}
	slices.Sort(cols)
	s.mu.Lock()
	s.evs = append(s.evs, ev.Normalized+" | "+strings.Join(cols, " "))
	s.mu.Unlock()
}

// TestTrackedRelayShapes: a relayed session's statements are attributed by
// their own text although the tracker reuses the last analysis for a text
// that differs from the previous one only in its constants
// (rewrite.SameShape): a changed constant keeps the facts; a changed
// column, condition or positional ORDER BY reference gets new ones.
func TestTrackedRelayShapes(t *testing.T) {
	sink := &shapeSink{}
	_, conn := rawTrackedSession(t, sink)
	buf := make([]byte, 1<<16)
	texts := []string{
		"SELECT email FROM customers WHERE id = 1",
		"SELECT email FROM customers WHERE id = 22",
		"SELECT name FROM customers WHERE id = 3",
		"SELECT name FROM customers WHERE id = 4 OR ssn = '5'",
		"SELECT name FROM customers WHERE id = 6 OR ssn = 'it''s'",
		"SELECT email, name FROM customers ORDER BY 1",
		"SELECT email, name FROM customers ORDER BY 2",
		"SELECT email FROM customers WHERE id = 7",
		// Longer than the tracker keeps to compare the next text with.
		"SELECT email FROM customers WHERE id = 8 OR name = '" + strings.Repeat("x", 9000) + "'",
		"SELECT email FROM customers WHERE id = 9 OR name = '" + strings.Repeat("y", 9000) + "'",
		"SELECT name FROM customers WHERE id = 10",
	}
	for _, sql := range texts {
		if _, err := conn.Write(encodeAll(t, &pgproto3.Query{String: sql})); err != nil {
			t.Fatal(err)
		}
		if err := readToReady(conn, buf); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{
		"SELECT email FROM customers WHERE id = ? | customers.email:output customers.id:filter",
		"SELECT email FROM customers WHERE id = ? | customers.email:output customers.id:filter",
		"SELECT name FROM customers WHERE id = ? | customers.id:filter customers.name:output",
		"SELECT name FROM customers WHERE id = ? OR ssn = ? | customers.id:filter customers.name:output customers.ssn:filter",
		"SELECT name FROM customers WHERE id = ? OR ssn = ? | customers.id:filter customers.name:output customers.ssn:filter",
		"SELECT email, name FROM customers ORDER BY 1 | customers.email:output|group-order customers.name:output",
		"SELECT email, name FROM customers ORDER BY 2 | customers.email:output customers.name:output|group-order",
		"SELECT email FROM customers WHERE id = ? | customers.email:output customers.id:filter",
		"SELECT email FROM customers WHERE id = ? OR name = ? | customers.email:output customers.id:filter customers.name:filter",
		"SELECT email FROM customers WHERE id = ? OR name = ? | customers.email:output customers.id:filter customers.name:filter",
		"SELECT name FROM customers WHERE id = ? | customers.id:filter customers.name:output",
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		sink.mu.Lock()
		got := slices.Clone(sink.evs)
		sink.mu.Unlock()
		if len(got) >= len(want) || time.Now().After(deadline) {
			if !slices.Equal(got, want) {
				t.Fatalf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestBulkTextsNotKept: distinct large texts (bulk statements) are
// analysed for their own run only. Neither a tracked relayed session's
// facts cache nor a masked session's plan and template caches keep them,
// so that a client cannot fill the proxy's memory with them.
func TestBulkTextsNotKept(t *testing.T) {
	heap := func() int64 {
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return int64(m.HeapAlloc)
	}
	// run sends n texts of about 78 kB, text(i) distinct for each i: kept,
	// the caches would hold at least twice that per text.
	run := func(t *testing.T, conn net.Conn, n int, text func(i int) string) {
		buf := make([]byte, 1<<16)
		send := func(i int) {
			if _, err := conn.Write(encodeAll(t, &pgproto3.Query{String: text(i)})); err != nil {
				t.Fatal(err)
			}
			if err := readToReady(conn, buf); err != nil {
				t.Fatal(err)
			}
		}
		send(0)
		before := heap()
		for i := 1; i <= n; i++ {
			send(i)
		}
		grown := heap() - before
		t.Logf("the heap grew by %.1f MB over %d distinct texts of %d kB", float64(grown)/(1<<20), n, len(text(0))/1000)
		if grown > 4<<20 {
			t.Errorf("the heap grew by %.1f MB: the texts were kept", float64(grown)/(1<<20))
		}
	}
	t.Run("relayed and tracked", func(t *testing.T) {
		// The facts cache keys on the text without its literals: no
		// literal here, so the key is as long as the text.
		pad := strings.Repeat(" AND id >= id", 6000)
		_, conn := rawTrackedSession(t, &countingSink{})
		run(t, conn, 80, func(i int) string { return fmt.Sprintf("SELECT email AS c%d FROM customers WHERE id = 1%s", i, pad) })
	})
	t.Run("masked", func(t *testing.T) {
		// Without a literal the plan cache keys on the whole text (no
		// template), and a long comment costs the analysis little.
		pad := strings.Repeat("x", 78000)
		conn := protocolSession(t, shopProxy(t), "shop_analyst")
		run(t, conn, 80, func(i int) string { return fmt.Sprintf("SELECT email FROM customers WHERE id = id /* %d%s */", i, pad) })
	})
}

// endSink records, per session, how many statements its sink got, and how
// many it had got when End came.
type endSink struct {
	mu    sync.Mutex
	stmts map[uint64]int
	ended map[uint64]int
	late  int // statements after their session's End
}

func (s *endSink) Statement(ev *proxy.StatementEvent) { s.SessionSink(ev).Statement(ev) }

func (s *endSink) SessionSink(base *proxy.StatementEvent) proxy.StatementSink {
	return &endSession{s: s, id: base.Session}
}

type endSession struct {
	s  *endSink
	id uint64
}

func (e *endSession) Statement(ev *proxy.StatementEvent) {
	// A slow sink: the io_uring loop's handoff falls behind.
	time.Sleep(500 * time.Microsecond)
	e.s.mu.Lock()
	defer e.s.mu.Unlock()
	if _, ok := e.s.ended[e.id]; ok {
		e.s.late++
	}
	e.s.stmts[e.id]++
}

func (e *endSession) End() {
	e.s.mu.Lock()
	defer e.s.mu.Unlock()
	e.s.ended[e.id] = e.s.stmts[e.id]
}

// TestTrackedSessionEndsAfterItsStatements: a session's sink gets End
// after every statement of the session, including those the io_uring
// loop relayed last, whose events reach the sinks from another goroutine
// (the loop's handoff): the session waits for them when the loop lets go
// of it.
func TestTrackedSessionEndsAfterItsStatements(t *testing.T) {
	sink := &endSink{stmts: map[uint64]int{}, ended: map[uint64]int{}}
	p := trackedProxy(t, sink)
	const sessions, statements = 8, 40
	var wg sync.WaitGroup
	errs := make(chan error, sessions)
	for range sessions {
		conn := protocolSession(t, p, "shop_dpo")
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			buf := make([]byte, 1<<16)
			for i := range statements {
				if _, err := conn.Write(encodeAll(t, &pgproto3.Query{String: fmt.Sprintf("SELECT email FROM customers WHERE id = %d", 1+i%3)})); err != nil {
					errs <- err
					return
				}
				if err := readToReady(conn, buf); err != nil {
					errs <- err
					return
				}
			}
			if _, err := conn.Write(encodeAll(t, &pgproto3.Terminate{})); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "every session's End", func() bool {
		sink.mu.Lock()
		defer sink.mu.Unlock()
		return len(sink.ended) == sessions
	})
	sink.mu.Lock()
	defer sink.mu.Unlock()
	for id, n := range sink.ended {
		if n != statements || sink.stmts[id] != statements {
			t.Errorf("session %d: End after %d statements, %d in all, want %d", id, n, sink.stmts[id], statements)
		}
	}
	if sink.late > 0 {
		t.Errorf("%d statements reached their sink after its End", sink.late)
	}
}

// gateSink is a sink that may wait (proxy.BlockingSink): each statement
// waits for the test to open the gate.
type gateSink struct{ gate chan struct{} }

func (s *gateSink) Blocks() bool { return true }

func (s *gateSink) Statement(ev *proxy.StatementEvent) { <-s.gate }

// TestBlockingSinkHoldsTheSession: with a sink that may wait (the audit
// log's block policy), a statement's answer waits until the sink took the
// statement, also for a session the io_uring loop relays (whose events
// otherwise reach the sinks through the loop's handoff, later).
func TestBlockingSinkHoldsTheSession(t *testing.T) {
	sink := &gateSink{gate: make(chan struct{})}
	_, conn := rawTrackedSession(t, sink)
	buf := make([]byte, 1<<16)
	for i := range 3 {
		if _, err := conn.Write(encodeAll(t, &pgproto3.Query{String: fmt.Sprintf("SELECT email FROM customers WHERE id = %d", i+1)})); err != nil {
			t.Fatal(err)
		}
		answered := make(chan error, 1)
		go func() { answered <- readToReady(conn, buf) }()
		select {
		case err := <-answered:
			t.Fatalf("statement %d answered (%v) before the sink took it", i+1, err)
		case <-time.After(300 * time.Millisecond):
		}
		sink.gate <- struct{}{}
		select {
		case err := <-answered:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("statement %d not answered after the sink took it", i+1)
		}
	}
}
