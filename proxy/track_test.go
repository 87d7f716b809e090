package proxy

import (
	"fmt"
	"strings"
	"testing"
	"time"
	"unsafe"

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
	s := &session{start: time.Now(), clock: [2]int64{-1, -1}}
	return &tracker{s: s, sink: sink, epochWall: s.start.UnixNano(), stmts: map[string]*trackedStmt{}, portals: map[string]*trackedStmt{},
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

// TestTrackerStatementNames follows prepared statements and portals by
// name through Parse, Bind, Execute and Close, including a statement
// closed or parsed again under the name a Bind last used (the tracker
// remembers that statement, and the unnamed portal's, outside its maps).
func TestTrackerStatementNames(t *testing.T) {
	sink := &recordingSink{}
	tr := newTestTracker(sink)
	tr.masked = true // statements from their text alone, no facts cache
	bind := func(portal, stmt string) { tr.bind(extMsg('B', cstr(portal), cstr(stmt), []byte{0, 0, 0, 0, 0, 0})) }
	closeMsg := func(kind byte, name string) { tr.close(extMsg('C', []byte{kind}, cstr(name))) }
	ran := func(portal string) string {
		t.Helper()
		n := len(sink.evs)
		tr.execute(extMsg('E', cstr(portal), []byte{0, 0, 0, 0}))
		tr.syncPoint(false)
		tr.answered('C', extMsg('C', cstr("SELECT 1")))
		tr.ready()
		if len(sink.evs) != n+1 {
			t.Fatalf("%d events after an Execute, want %d", len(sink.evs), n+1)
		}
		return sink.evs[n].Normalized
	}
	check := func(step, got, want string) {
		t.Helper()
		if got != want {
			t.Errorf("%s: statement %q, want %q", step, got, want)
		}
	}
	tr.parse("s", "SELECT 1", nil, nil)
	bind("", "s")
	check("bound", ran(""), "SELECT ?")
	bind("", "s")
	check("bound again", ran(""), "SELECT ?")
	closeMsg('S', "s")
	bind("", "s")
	check("closed statement", ran(""), "")
	tr.parse("s", "SELECT 2, 'x'", nil, nil)
	bind("", "s")
	check("parsed again", ran(""), "SELECT ?, ?")
	tr.parse("t", "SELECT 3 FROM x", nil, nil)
	bind("p", "t")
	bind("", "s")
	check("named portal", ran("p"), "SELECT ? FROM x")
	check("unnamed portal", ran(""), "SELECT ?, ?")
	check("named portal again", ran("p"), "SELECT ? FROM x")
	closeMsg('P', "")
	check("closed unnamed portal", ran(""), "")
	check("named portal after", ran("p"), "SELECT ? FROM x")
	closeMsg('P', "p")
	check("closed named portal", ran("p"), "")
	tr.parse("", "SELECT 4", nil, nil)
	bind("", "")
	check("unnamed statement", ran(""), "SELECT ?")
	tr.parse("", "VALUES (5)", nil, nil)
	bind("", "")
	check("unnamed statement parsed again", ran(""), "VALUES (?)")
	// Names kept in the tracker's lines and outside them (pgx's are 58
	// bytes), told apart by their last byte.
	for _, n := range []int{1, shortName, shortName + 1, 58, maxBoundName} {
		a := strings.Repeat("a", n)
		b := a[:n-1] + "b"
		tr.parse(a, "SELECT 7", nil, nil)
		tr.parse(b, "SELECT 8, 9", nil, nil)
		step := fmt.Sprintf("%d-byte name", n)
		bind("", a)
		if !tr.isBound(a) || tr.isBound(b) {
			t.Errorf("%s: the Bind's statement is not the one remembered", step)
		}
		check(step, ran(""), "SELECT ?")
		bind("", b)
		check(step+", other", ran(""), "SELECT ?, ?")
		bind("", a)
		check(step+", again", ran(""), "SELECT ?")
		closeMsg('S', a)
		bind("", a)
		check(step+", closed", ran(""), "")
		bind("", b)
		check(step+", other after", ran(""), "SELECT ?, ?")
	}
	long := strings.Repeat("n", maxBoundName+1)
	tr.parse(long, "SELECT 6", nil, nil)
	bind("", long)
	check("long name", ran(""), "SELECT ?")
	closeMsg('S', long)
	bind("", long)
	check("long name closed", ran(""), "")
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

// TestTrackerTimes: a statement's start is the wall-clock time it was
// sent and its duration runs until its answer; within one buffer a side
// reads the clock once (session.stamp), outside a buffer each time.
func TestTrackerTimes(t *testing.T) {
	sink := &recordingSink{}
	tr := newTestTracker(sink)
	tr.stmts["s"] = &trackedStmt{normalized: "SELECT ?", fingerprint: "f"}
	before := time.Now()
	tr.bind(extMsg('B', cstr(""), cstr("s"), []byte{0, 0, 0, 0, 0, 0}))
	tr.execute(extMsg('E', cstr(""), []byte{0, 0, 0, 0}))
	tr.syncPoint(false)
	time.Sleep(5 * time.Millisecond)
	tr.answered('C', extMsg('C', cstr("SELECT 1")))
	tr.ready()
	after := time.Now()
	if len(sink.evs) != 1 {
		t.Fatalf("%d events, want 1", len(sink.evs))
	}
	ev := sink.evs[0]
	if ev.Start.Before(before.Add(-time.Millisecond)) || ev.Start.After(before.Add(5*time.Millisecond)) {
		t.Errorf("start %v, sent at %v", ev.Start, before)
	}
	if ev.Duration < 5*time.Millisecond || ev.Duration > after.Sub(before) {
		t.Errorf("duration %v, want between 5ms and %v", ev.Duration, after.Sub(before))
	}

	s := tr.s
	s.clock[0] = 0 // a buffer starts
	a := s.stamp(0)
	time.Sleep(2 * time.Millisecond)
	if b := s.stamp(0); b != a {
		t.Errorf("two reads in one buffer: %d and %d", a, b)
	}
	s.clock[0] = -1 // the buffer is done
	if c := s.stamp(0); c < a+int64(2*time.Millisecond) {
		t.Errorf("read outside a buffer: %d, want at least %d", c, a+int64(2*time.Millisecond))
	}
}

// TestTrackerTransformsCount: the count of queued statements with output
// transforms, which lets the server side skip the lock when it is zero,
// follows statements answered, failed and skipped after an error.
func TestTrackerTransformsCount(t *testing.T) {
	tr := newTestTracker(&recordingSink{})
	dec := newTracked(&rewrite.Statement{Kind: "SelectStmt", OutputsKnown: true,
		Outputs: []rewrite.Output{{Transform: rewrite.TransformNone}, {Transform: rewrite.TransformDecrypt}}}, "SELECT a, b FROM t", "fd")
	plain := newTracked(&rewrite.Statement{Kind: "SelectStmt", OutputsKnown: true, Outputs: []rewrite.Output{{}}}, "SELECT a FROM t", "fp")
	if !dec.transforms || plain.transforms {
		t.Fatalf("transforms: %v, %v", dec.transforms, plain.transforms)
	}
	tr.stmts["d"], tr.stmts["p"] = dec, plain
	run := func(names ...string) {
		for _, n := range names {
			tr.bind(extMsg('B', cstr(""), cstr(n), []byte{0, 0, 0, 0, 0, 0}))
			tr.execute(extMsg('E', cstr(""), []byte{0, 0, 0, 0}))
		}
		tr.syncPoint(false)
	}
	run("p", "d", "d")
	if n := tr.transforms.Load(); n != 2 {
		t.Fatalf("%d queued with transforms, want 2", n)
	}
	if tr.headOutputs() != nil {
		t.Fatal("outputs for the plain statement at the head")
	}
	tr.answered('C', extMsg('C', cstr("SELECT 1")))
	if outs := tr.headOutputs(); len(outs) != 2 {
		t.Fatalf("outputs at the head: %v", outs)
	}
	tr.answered('C', extMsg('C', cstr("SELECT 1")))
	tr.failed("22012", nil) // the second "d"; nothing left to skip
	tr.ready()
	if n := tr.transforms.Load(); n != 0 {
		t.Fatalf("%d queued with transforms after all were answered, want 0", n)
	}
	run("d", "d", "p", "d")
	tr.failed("22012", nil) // the first fails, the rest is skipped
	tr.ready()
	if n := tr.transforms.Load(); n != 0 || tr.headOutputs() != nil {
		t.Fatalf("%d queued with transforms after an error skipped them, want 0", n)
	}
}

// TestTrackerPlanShared: the tracked statements of a masked session's plan
// are made once and shared by the sessions that run the plan, for the
// same standard_conforming_strings; a session with the other setting
// normalizes the text itself.
func TestTrackerPlanShared(t *testing.T) {
	plan := &rewrite.Plan{Analyzed: true, Statements: []rewrite.Statement{{Kind: "SelectStmt"}}}
	const sql = `SELECT 'a\' FROM t`
	a, b, off := newTestTracker(nil), newTestTracker(nil), newTestTracker(nil)
	off.s.scsOff.Store(true)
	for _, tr := range []*tracker{a, b, off} {
		tr.masked = true
	}
	sa := a.analyse(sql, plan, nil)
	if len(sa) != 1 || sa[0].normalized != "SELECT ? FROM t" || sa[0].st != &plan.Statements[0] {
		t.Fatalf("first session: %+v", sa[0])
	}
	if sb := b.analyse(sql, plan, nil); sb[0] != sa[0] {
		t.Fatal("a second session with the same settings made its own tracked statement")
	}
	// With standard_conforming_strings off the backslash escapes the
	// quote: the text is not scannable, so it has no normalized form.
	if so := off.analyse(sql, plan, nil); so[0] == sa[0] || so[0].normalized != "" {
		t.Fatalf("session with standard_conforming_strings off: %+v", so[0])
	}
	if sa2 := a.analyse(sql, plan, nil); sa2[0].normalized != "SELECT ? FROM t" {
		t.Fatalf("first session again: %+v", sa2[0])
	}
}

// TestTrackerFollowsContext: a relayed session's tracker follows the
// search_path and role its statements set (the context the facts cache
// resolves names in), from the flag newTracked computes, and nothing else
// changes it.
func TestTrackerFollowsContext(t *testing.T) {
	tr := newTestTracker(nil)
	tr.s.user = "alice"
	tr.user = "alice"
	sel := newTracked(&rewrite.Statement{Kind: "SelectStmt"}, "SELECT ?", "f0")
	tr.follow([]*trackedStmt{sel})
	if v := tr.ctxVersion.Load(); v != 0 {
		t.Fatalf("a SELECT changed the context (version %d)", v)
	}
	setPath := newTracked(&rewrite.Statement{Kind: "VariableSetStmt", SearchPath: []string{"app", "public"}}, "SET search_path TO app, public", "f1")
	tr.follow([]*trackedStmt{sel, setPath})
	if strings.Join(tr.path, ",") != "app,public" || tr.ctxVersion.Load() != 1 {
		t.Fatalf("after SET search_path: path %v, version %d", tr.path, tr.ctxVersion.Load())
	}
	tr.follow([]*trackedStmt{newTracked(&rewrite.Statement{Kind: "VariableSetStmt", Role: "auditor"}, "SET ROLE auditor", "f2")})
	if tr.user != "auditor" {
		t.Fatalf("after SET ROLE: user %q", tr.user)
	}
	tr.follow([]*trackedStmt{newTracked(&rewrite.Statement{Kind: "VariableSetStmt", ResetRole: true}, "RESET ROLE", "f3")})
	tr.follow([]*trackedStmt{newTracked(&rewrite.Statement{Kind: "VariableSetStmt", ResetSearchPath: true}, "RESET search_path", "f4")})
	if tr.user != "alice" || tr.path != nil || tr.ctxVersion.Load() != 4 {
		t.Fatalf("after RESET ROLE and RESET search_path: user %q, path %v, version %d", tr.user, tr.path, tr.ctxVersion.Load())
	}
	// A masked session's context is not followed here.
	tr.masked = true
	tr.follow([]*trackedStmt{setPath})
	if tr.path != nil {
		t.Fatalf("a masked session's tracker followed SET search_path: %v", tr.path)
	}
}

// TestTrackerLayout keeps what every relayed statement touches in the
// cache lines the tracker's comments promise: a cold line costs the relay
// thread about as much as the rest of a statement's tracking.
func TestTrackerLayout(t *testing.T) {
	var tr tracker
	var ts trackedStmt
	for _, c := range []struct {
		what     string
		end, max uintptr
	}{
		{"pending", unsafe.Sizeof(pending{}), 32},
		{"tracker's first line", unsafe.Offsetof(tr.queue) + unsafe.Sizeof(tr.queue), 64},
		{"tracker's first two lines", unsafe.Offsetof(tr.boundShort) + unsafe.Sizeof(tr.boundShort), 128},
		{"trackedStmt's first line", unsafe.Offsetof(ts.syntax) + 1, 64},
		{"the lookup's lines", unsafe.Offsetof(tr.lastLits) + unsafe.Sizeof(tr.lastLits) - unsafe.Offsetof(tr.ctxVersion), 128},
	} {
		if c.end > c.max {
			t.Errorf("%s: %d bytes, more than %d", c.what, c.end, c.max)
		}
	}
}
