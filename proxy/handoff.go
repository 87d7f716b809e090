package proxy

import (
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// handoff takes the statement events of the sessions an io_uring loop
// relays off the loop's thread. That thread relays every such session, so
// it is the proxy's bottleneck when they are busy; handing an event to
// the sinks (the usage ledger's counts, the audit log's queue) there
// would cost it several cache misses per statement, since the sessions'
// sink state is cold by the time the thread comes back to a session.
// Instead the loop appends each event to a batch in its own memory, and a
// goroutine hands the batches' events to the sinks, in order.
//
// A batch is sent when it is full, when a session leaves the loop, and at
// the goroutine's request (handoffDelay after a batch began, so that a
// quiet loop's last statements are not held). A session's tracker uses
// the handoff only while the loop relays the session; when the loop lets
// go of it, ringReturn waits (wait) until the goroutine has handed over
// everything the loop sent up to then, so the session's later events,
// which its goroutines hand over directly, come after, and its sinks are
// never called from two goroutines at once.
type handoff struct {
	// The loop's.
	buf  []handed
	sent uint64 // batches sent

	ch   chan []handed // batches, to the goroutine
	free chan []handed // emptied batches, back to the loop

	// queued says buf holds events: set by the loop when buf becomes
	// non-empty, cleared when it is sent. The goroutine asks for a batch
	// that has waited handoffDelay (request). After a second without
	// events it stops checking (parked) until the loop wakes it.
	queued  atomic.Bool
	parked  atomic.Bool
	wake    chan struct{}
	request func()

	mu   sync.Mutex
	cond sync.Cond
	done uint64 // batches the goroutine has handed over

	ev StatementEvent // the goroutine's
}

// handed is one statement event in a batch.
type handed struct {
	t    *tracker
	ts   *trackedStmt
	wall int64
	d    time.Duration
	rows int64
	rare *handedRare // nil: outcome ok, no SQLSTATE, no rule
}

// handedRare holds what only a failed or refused statement has.
type handedRare struct{ outcome, code, rule string }

const (
	// handoffBatch is how many events a batch holds: about 10 ms of a
	// busy loop's statements.
	handoffBatch = 256
	// handoffBatches is how many batches may wait for the goroutine
	// before the loop waits for it (a goroutine that falls behind slows
	// the loop rather than taking memory without bound).
	handoffBatches = 64
	// handoffDelay is the longest an event waits in the loop's batch
	// (the goroutine checks this often).
	handoffDelay = 20 * time.Millisecond
)

// newHandoff starts the goroutine of a handoff; request asks the loop to
// send its batch (see ringLoop.post).
func newHandoff(request func()) *handoff {
	h := &handoff{ch: make(chan []handed, handoffBatches), free: make(chan []handed, handoffBatches+2), wake: make(chan struct{}, 1), request: request}
	h.cond.L = &h.mu
	h.buf = make([]handed, 0, handoffBatch)
	go h.run()
	return h
}

// add appends an event to the loop's batch, and sends the batch when it
// is full. It runs on the loop's thread.
func (h *handoff) add(t *tracker, ts *trackedStmt, wall int64, d time.Duration, rows int64, outcome, code, rule string) {
	var rare *handedRare
	if outcome != "ok" || code != "" || rule != "" {
		rare = &handedRare{outcome, code, rule}
	}
	h.buf = append(h.buf, handed{t: t, ts: ts, wall: wall, d: d, rows: rows, rare: rare})
	switch len(h.buf) {
	case 1:
		h.queued.Store(true)
		if h.parked.Load() {
			select {
			case h.wake <- struct{}{}:
			default:
			}
		}
	case handoffBatch:
		h.flush()
	}
}

// flush sends the loop's batch, if it holds events. It runs on the
// loop's thread, and returns the number of batches sent so far.
func (h *handoff) flush() uint64 {
	if len(h.buf) == 0 {
		return h.sent
	}
	h.ch <- h.buf
	h.sent++
	select {
	case b := <-h.free:
		h.buf = b
	default:
		h.buf = make([]handed, 0, handoffBatch)
	}
	h.queued.Store(false)
	return h.sent
}

// wait returns once the goroutine has handed over the first n batches.
func (h *handoff) wait(n uint64) {
	h.mu.Lock()
	for h.done < n {
		h.cond.Wait()
	}
	h.mu.Unlock()
}

// handoffIdleTicks is how many checks find no event before the goroutine
// parks.
const handoffIdleTicks = int(time.Second / handoffDelay)

// run is the goroutine.
func (h *handoff) run() {
	tick := time.NewTicker(handoffDelay)
	defer tick.Stop()
	idle := 0
	for {
		select {
		case b := <-h.ch:
			h.take(b)
			idle = 0
		case <-tick.C:
			if h.queued.Load() {
				idle = 0
				h.request()
				continue
			}
			if idle++; idle < handoffIdleTicks {
				continue
			}
			// Park until the loop has an event (add wakes a parked
			// goroutine) or sends a batch. parked is set before queued
			// is checked, and add sets queued before it checks parked:
			// one of the two sees the other.
			tick.Stop()
			h.parked.Store(true)
			if !h.queued.Load() {
				select {
				case <-h.wake:
				case b := <-h.ch:
					h.take(b)
				}
			}
			h.parked.Store(false)
			idle = 0
			tick.Reset(handoffDelay)
		}
	}
}

// take hands a batch's events over and gives the batch back to the loop.
func (h *handoff) take(b []handed) {
	h.deliver(b)
	clear(b) // drop the references to trackers and statements
	select {
	case h.free <- b[:0]:
	default:
	}
	h.mu.Lock()
	h.done++
	h.cond.Broadcast()
	h.mu.Unlock()
}

// deliver hands the events of a batch to their sessions' sinks. A panic
// in a sink (a bug) loses the rest of that batch's events, logged, and
// the goroutine goes on.
func (h *handoff) deliver(b []handed) {
	i := 0
	defer func() {
		if v := recover(); v != nil {
			t := b[i].t
			t.s.srv.log.Error("internal error: statement events lost", "session", t.s.id, "lost", len(b)-i,
				"panic", fmt.Sprintf("%T", v), "stack", string(debug.Stack()))
		}
	}()
	for ; i < len(b); i++ {
		e := &b[i]
		outcome, code, rule := "ok", "", ""
		if e.rare != nil {
			outcome, code, rule = e.rare.outcome, e.rare.code, e.rare.rule
		}
		if e.t.ranShort(e.ts, e.wall, e.d, e.rows, outcome) {
			continue
		}
		h.ev = e.t.base
		e.t.statement(&h.ev, e.ts, e.wall, e.d, e.rows, outcome, code, rule)
	}
}
