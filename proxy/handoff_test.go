package proxy

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// handSink records a session's events, by either way, and notices being
// called from two goroutines at once.
type handSink struct {
	busy    atomic.Bool
	overlap atomic.Bool
	evs     []string
}

func (s *handSink) enter() {
	if !s.busy.CompareAndSwap(false, true) {
		s.overlap.Store(true)
	}
	time.Sleep(time.Microsecond) // widen the window
}

func (s *handSink) leave() { s.busy.Store(false) }

func (s *handSink) Statement(ev *StatementEvent) {
	s.enter()
	defer s.leave()
	s.evs = append(s.evs, fmt.Sprintf("%s rows=%d %s %s session=%d", ev.Normalized, ev.Rows, ev.Outcome, ev.SQLState, ev.Session))
}

func (s *handSink) Ran(m *Memo, start time.Time, d time.Duration, rows int64) bool {
	s.enter()
	defer s.leave()
	s.evs = append(s.evs, fmt.Sprintf("%s rows=%d ran", m.Load(), rows))
	return true
}

// TestHandoff runs two sessions' statements through a handoff, as the
// io_uring loop does, then directly, as their goroutines do after the
// loop let go of them: every event reaches its sink once, in order, by
// the short way when the statement has a memo, never from two goroutines
// at once; a full batch goes without being asked, and a waiting one is
// asked for.
func TestHandoff(t *testing.T) {
	requests := make(chan struct{}, 1)
	h := newHandoff(func() {
		select {
		case requests <- struct{}{}:
		default:
		}
	})
	var sinks [2]*handSink
	var trs [2]*tracker
	var want [2][]string
	for i := range trs {
		sinks[i] = &handSink{}
		trs[i] = newTestTracker(sinks[i])
		trs[i].ran = sinks[i]
		trs[i].base.Session = uint64(i + 1)
		trs[i].ev.Session = uint64(i + 1)
		trs[i].hand = h
		known := &trackedStmt{normalized: "SELECT known", fingerprint: "k"}
		known.memo.Store("memo" + fmt.Sprint(i))
		trs[i].stmts["known"] = known
		trs[i].stmts["plain"] = &trackedStmt{normalized: "SELECT plain", fingerprint: "p"}
	}
	run := func(i int, name string, rows int, fail bool) {
		tr := trs[i]
		tr.bind(extMsg('B', cstr(""), cstr(name), []byte{0, 0, 0, 0, 0, 0}))
		tr.execute(extMsg('E', cstr(""), []byte{0, 0, 0, 0}))
		tr.syncPoint(false)
		switch {
		case fail:
			tr.failed("22012", nil)
			want[i] = append(want[i], fmt.Sprintf("SELECT %s rows=0 error 22012 session=%d", name, i+1))
		case name == "known":
			tr.answered('C', extMsg('C', cstr(fmt.Sprint("SELECT ", rows))))
			want[i] = append(want[i], fmt.Sprintf("memo%d rows=%d ran", i, rows))
		default:
			tr.answered('C', extMsg('C', cstr(fmt.Sprint("SELECT ", rows))))
			want[i] = append(want[i], fmt.Sprintf("SELECT %s rows=%d ok  session=%d", name, rows, i+1))
		}
		tr.ready()
	}

	// A full batch is sent without being asked.
	for n := range handoffBatch {
		run(n%2, []string{"known", "plain"}[n/2%2], n, n%7 == 3)
	}
	if h.sent != 1 || len(h.buf) != 0 {
		t.Fatalf("after %d events: %d batches sent, %d held, want 1 and 0", handoffBatch, h.sent, len(h.buf))
	}
	asked := func(what string) {
		t.Helper()
		select {
		case <-requests:
		case <-time.After(20 * handoffDelay):
			t.Fatalf("%s did not ask for a waiting batch", what)
		}
	}
	// A batch that waits is asked for.
	run(0, "plain", 1, false)
	run(1, "known", 2, false)
	asked("the handoff")
	// After a second without events the goroutine parks; an event wakes
	// it, and the batch is asked for.
	h.wait(h.flush())
	deadline := time.Now().Add(10 * time.Second)
	for !h.parked.Load() {
		if time.Now().After(deadline) {
			t.Fatal("the handoff's goroutine did not park without events")
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case <-requests:
	default:
	}
	run(1, "plain", 3, false)
	asked("a parked handoff")
	// The loop lets go of the sessions (ringLoop.maybeLet, ringReturn):
	// their later events go directly, after the handed ones.
	h.wait(h.flush())
	for i := range trs {
		trs[i].hand = nil
		run(i, "known", 9, false)
		run(i, "plain", 10, true)
	}
	for i, s := range sinks {
		if s.overlap.Load() {
			t.Errorf("session %d: its sink was called from two goroutines at once", i+1)
		}
		if fmt.Sprint(s.evs) != fmt.Sprint(want[i]) {
			t.Errorf("session %d: events\n%q\nwant\n%q", i+1, s.evs, want[i])
		}
	}
}
