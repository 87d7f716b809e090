package proxy

import (
	"testing"
	"time"

	"github.com/pgveil/pgveil/rewrite"
)

// recordingSink keeps a copy of every event.
type recordingSink struct{ evs []StatementEvent }

func (r *recordingSink) Statement(ev *StatementEvent) { r.evs = append(r.evs, *ev) }

// extMsg builds an extended-protocol message body as the tracker sees it
// (type byte, 4 length bytes, then the fields).
func extMsg(typ byte, fields ...[]byte) []byte {
	msg := []byte{typ, 0, 0, 0, 0}
	for _, f := range fields {
		msg = append(msg, f...)
	}
	return msg
}

func cstr(s string) []byte { return append([]byte(s), 0) }

func newTestTracker(sink StatementSink) *tracker {
	return &tracker{sink: sink, epoch: time.Now(), stmts: map[string]*trackedStmt{}, portals: map[string]*trackedStmt{},
		sqlPrep: map[string]*trackedStmt{}, cursors: map[string]*trackedStmt{}}
}

// TestTrackerPipelined runs a client that stays far ahead of the server
// (thousands of Execute messages in flight, a Sync every 10): every
// statement is answered once, in order, with its rows, and the queue does
// not grow with the number of statements.
func TestTrackerPipelined(t *testing.T) {
	sink := &recordingSink{}
	tr := newTestTracker(sink)
	st := &rewrite.Statement{Kind: "SelectStmt"}
	tr.stmts["s1"] = &trackedStmt{st: st, normalized: "SELECT ?", fingerprint: "f1"}
	bind := extMsg('B', cstr(""), cstr("s1"), []byte{0, 0, 0, 0, 0, 0})
	exec := extMsg('E', cstr(""), []byte{0, 0, 0, 0})
	const n, ahead = 20000, 3000
	sent, answered := 0, 0
	answer := func() {
		tr.answered('C', extMsg('C', cstr("SELECT 1")))
		answered++
		if answered%10 == 0 {
			tr.ready()
		}
	}
	for sent < n {
		tr.bind(bind)
		tr.execute(exec)
		sent++
		if sent%10 == 0 {
			tr.syncPoint(false)
		}
		if sent-answered > ahead {
			answer()
		}
	}
	for answered < n {
		answer()
	}
	if len(sink.evs) != n {
		t.Fatalf("%d events, want %d", len(sink.evs), n)
	}
	for i, ev := range sink.evs {
		if ev.Rows != 1 || ev.Outcome != "ok" || ev.Fingerprint != "f1" || ev.Memo == nil {
			t.Fatalf("event %d: %+v", i, ev)
		}
	}
	if tr.qh != 0 || len(tr.queue) != 0 {
		t.Fatalf("queue not empty at the end: head %d, len %d", tr.qh, len(tr.queue))
	}
	if c := cap(tr.queue); c > 4*ahead {
		t.Fatalf("queue capacity %d for at most %d statements in flight", c, ahead)
	}
}

// TestTrackerErrorSkipsToSync: an error answers its statement; the rest
// up to the sync point is never run and never recorded; the next batch is
// matched normally.
func TestTrackerErrorSkipsToSync(t *testing.T) {
	sink := &recordingSink{}
	tr := newTestTracker(sink)
	tr.stmts["a"] = &trackedStmt{normalized: "A", fingerprint: "fa"}
	tr.stmts["b"] = &trackedStmt{normalized: "B", fingerprint: "fb"}
	for _, name := range []string{"a", "b", "b"} {
		tr.bind(extMsg('B', cstr(""), cstr(name)))
		tr.execute(extMsg('E', cstr(""), []byte{0, 0, 0, 0}))
	}
	tr.syncPoint(false)
	tr.bind(extMsg('B', cstr("p"), cstr("b")))
	tr.execute(extMsg('E', cstr("p"), []byte{0, 0, 0, 5}))
	tr.syncPoint(false)

	tr.answered('C', extMsg('C', cstr("SELECT 2")))
	tr.failed("22012", nil)
	tr.ready()
	tr.answered('s', extMsg('s'))
	tr.ready()

	want := []struct {
		fp, outcome, code string
		rows              int64
	}{{"fa", "ok", "", 2}, {"fb", "error", "22012", 0}, {"fb", "ok", "", 5}}
	if len(sink.evs) != len(want) {
		t.Fatalf("%d events, want %d: %+v", len(sink.evs), len(want), sink.evs)
	}
	for i, w := range want {
		ev := sink.evs[i]
		if ev.Fingerprint != w.fp || ev.Outcome != w.outcome || ev.SQLState != w.code || ev.Rows != w.rows {
			t.Errorf("event %d: %s %s %s %d, want %+v", i, ev.Fingerprint, ev.Outcome, ev.SQLState, ev.Rows, w)
		}
	}
	if tr.qh != 0 || len(tr.queue) != 0 {
		t.Fatalf("queue not empty: head %d, len %d", tr.qh, len(tr.queue))
	}
}

// TestTrackerBindDoesNotAllocate: binding and executing a prepared
// statement through the unnamed portal, the pgbench -M prepared path,
// allocates nothing once the queue has grown.
func TestTrackerBindDoesNotAllocate(t *testing.T) {
	tr := newTestTracker(nil)
	tr.stmts["P0_1"] = &trackedStmt{normalized: "SELECT ?", fingerprint: "f"}
	bind := extMsg('B', cstr(""), cstr("P0_1"), []byte{0, 0, 0, 0, 0, 0})
	exec := extMsg('E', cstr(""), []byte{0, 0, 0, 0})
	cc := extMsg('C', cstr("SELECT 1"))
	run := func() {
		tr.bind(bind)
		tr.execute(exec)
		tr.syncPoint(false)
		tr.answered('C', cc)
		tr.ready()
	}
	run()
	if n := testing.AllocsPerRun(1000, run); n != 0 {
		t.Fatalf("%.1f allocations per statement", n)
	}
}

func TestTagRows(t *testing.T) {
	for tag, want := range map[string]int64{
		"SELECT 5\x00": 5, "INSERT 0 12": 12, "COPY 1000000": 1000000, "UPDATE 0": 0,
		"CREATE TABLE": 0, "SELECT": 0, "SELECT 5x": 0, "SELECT ": 0,
		"SELECT 999999999999999999": 999999999999999999, "SELECT 99999999999999999999": 0,
	} {
		if got := tagRows([]byte(tag)); got != want {
			t.Errorf("tagRows(%q) = %d, want %d", tag, got, want)
		}
	}
}
