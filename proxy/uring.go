package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// The io_uring relay (Config.IOUring, pgveil serve --io-uring) moves the
// steady state of relayed sessions off the Go scheduler. A session whose
// statements pass unchanged (not masked) over plain sockets on both sides
// is handed, at a ReadyForQuery while it is idle, to one event loop: a
// goroutine locked to its OS thread that owns an io_uring instance. The
// loop keeps a receive outstanding on both sockets of every session it
// holds, runs the pumps' framing and handlers (pump.process, unchanged:
// statement tracking included) on each completion, and sends what they
// relay with io_uring sends from a queue per socket (ringWriter). A pump
// whose queue holds more than ringQueueLimit bytes stops receiving until
// its peer has taken them (backpressure), so a slow client never stalls
// the loop or another session.
//
// Why: with a goroutine per direction every message costs a goroutine
// wake-up through the runtime's poller, and the scheduler polls once more
// without blocking before an idle thread sleeps — 2–3 µs of CPU per round
// trip more than PgBouncer's event loop on the reference machine. The loop
// does one io_uring_enter per batch of completions, which submits the
// sends and receives and waits for the next completions; measured, sends
// through the ring also cost less than write(2) on the same sockets
// (bench/README.md).
//
// The loop blocks in io_uring_enter with a raw system call while it holds
// sessions, so it keeps its scheduler core (P) while it waits: the runtime
// neither hands the P on nor wakes its monitor thread for each wait. Its
// core is therefore an extra one (sharedRing raises GOMAXPROCS by one). A
// preemption request (the garbage collector stopping the world, say)
// interrupts the wait with a signal (EINTR); the loop then yields
// (runtime.Gosched) before it waits again. With no session it waits as an
// ordinary blocking system call, and so does the rest of a wait that was
// interrupted: the runtime preempts a goroutine that has run for 10 ms,
// so such a wait is an idle spell, and waiting on with the raw call would
// mean a preemption signal every 10 ms until traffic resumes (0.8–0.9% of
// a CPU for ten idle sessions, against 0–0.2% now).
//
// Everything else stays with the session's goroutines: the startup,
// authentication and the first ReadyForQuery, masked and TLS sessions,
// and every way a session ends. A session leaves the loop when a pump
// fails or stops (an error, end of stream, Terminate, a draining proxy's
// idle ReadyForQuery) or when anything else ends it (session.end calls
// leaveRing first): the loop cancels its outstanding operations, and the
// session gets new net.Conns over the same sockets, sends what was still
// queued, and the existing code finishes it exactly as before. If the loop
// itself fails (ringLoop.fail), the sessions it holds end with XX000 and
// every session from then on is relayed with goroutines.

const (
	sysIOUringSetup = 425 // the same number on every Linux architecture
	sysIOUringEnter = 426

	uringOpAsyncCancel = 14
	uringOpRead        = 22
	uringOpSend        = 26
	uringOpRecv        = 27

	uringSetupSingleIssuer = 1 << 12
	uringSetupDeferTaskrun = 1 << 13
	uringEnterGetevents    = 1

	uringEntries = 1024
)

// The layouts of the kernel's struct io_uring_params, io_uring_sqe and
// io_uring_cqe (include/uapi/linux/io_uring.h).
type uringSQOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type uringCQOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

type uringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	sqOff                                                                  uringSQOffsets
	cqOff                                                                  uringCQOffsets
}

type uringSQE struct {
	opcode, flags      uint8
	ioprio             uint16
	fd                 int32
	off, addr          uint64
	len, opFlags       uint32
	userData           uint64
	bufIndex, personal uint16
	spliceFdIn         int32
	addr3, pad         uint64
}

type uringCQE struct {
	userData uint64
	res      int32
	flags    uint32
}

// uring is one io_uring instance, used by one thread.
type uring struct {
	fd                     int
	sqHead, sqTail, sqMask *uint32
	sqEntries              uint32
	sqArray                []uint32
	sqes                   []uringSQE
	cqHead, cqTail, cqMask *uint32
	cqes                   []uringCQE
	tail, toSubmit         uint32
}

// newUring sets up an io_uring instance. It fails where the kernel has
// none or forbids it (kernel.io_uring_disabled, a seccomp filter).
func newUring(entries uint32) (*uring, error) {
	var p uringParams
	p.flags = uringSetupSingleIssuer | uringSetupDeferTaskrun
	fd, _, e := syscall.RawSyscall(sysIOUringSetup, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if e != 0 {
		return nil, os.NewSyscallError("io_uring_setup", e)
	}
	r := &uring{fd: int(fd), sqEntries: p.sqEntries}
	size := max(int(p.sqOff.array+p.sqEntries*4), int(p.cqOff.cqes+p.cqEntries*uint32(unsafe.Sizeof(uringCQE{}))))
	// One mapping holds both rings (IORING_FEAT_SINGLE_MMAP, Linux 5.4).
	m, err := syscall.Mmap(r.fd, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED|syscall.MAP_POPULATE)
	if err != nil {
		syscall.Close(r.fd)
		return nil, fmt.Errorf("io_uring rings: %w", err)
	}
	sm, err := syscall.Mmap(r.fd, 0x10000000, int(p.sqEntries)*int(unsafe.Sizeof(uringSQE{})), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED|syscall.MAP_POPULATE)
	if err != nil {
		syscall.Munmap(m)
		syscall.Close(r.fd)
		return nil, fmt.Errorf("io_uring submission entries: %w", err)
	}
	base := unsafe.Pointer(&m[0])
	r.sqHead = (*uint32)(unsafe.Add(base, p.sqOff.head))
	r.sqTail = (*uint32)(unsafe.Add(base, p.sqOff.tail))
	r.sqMask = (*uint32)(unsafe.Add(base, p.sqOff.ringMask))
	r.sqArray = unsafe.Slice((*uint32)(unsafe.Add(base, p.sqOff.array)), p.sqEntries)
	r.cqHead = (*uint32)(unsafe.Add(base, p.cqOff.head))
	r.cqTail = (*uint32)(unsafe.Add(base, p.cqOff.tail))
	r.cqMask = (*uint32)(unsafe.Add(base, p.cqOff.ringMask))
	r.cqes = unsafe.Slice((*uringCQE)(unsafe.Add(base, p.cqOff.cqes)), p.cqEntries)
	r.sqes = unsafe.Slice((*uringSQE)(unsafe.Pointer(&sm[0])), p.sqEntries)
	r.tail = atomic.LoadUint32(r.sqTail)
	return r, nil
}

// sqe returns a cleared submission entry, submitting what is queued first
// when the queue is full.
func (r *uring) sqe() *uringSQE {
	if r.tail-atomic.LoadUint32(r.sqHead) >= r.sqEntries {
		r.enter(0, false)
	}
	i := r.tail & *r.sqMask
	e := &r.sqes[i]
	*e = uringSQE{}
	r.sqArray[i] = i
	r.tail++
	r.toSubmit++
	return e
}

// enter submits the queued entries and waits until at least wait
// completions are there. With idle set (the loop holds no session), and
// after an interruption, it waits as an ordinary blocking system call,
// which lets the runtime use the loop's core meanwhile.
func (r *uring) enter(wait uint32, idle bool) {
	atomic.StoreUint32(r.sqTail, r.tail)
	n := r.toSubmit
	r.toSubmit = 0
	for {
		var got uintptr
		var e syscall.Errno
		if idle && wait > 0 {
			got, _, e = syscall.Syscall6(sysIOUringEnter, uintptr(r.fd), uintptr(n), uintptr(wait), uringEnterGetevents, 0, 0)
		} else {
			// A raw system call: see the comment at the top of this
			// file.
			got, _, e = syscall.RawSyscall6(sysIOUringEnter, uintptr(r.fd), uintptr(n), uintptr(wait), uringEnterGetevents, 0, 0)
		}
		switch e {
		case 0:
			if uint32(got) >= n {
				return
			}
			n -= uint32(got)
			continue
		case syscall.EINTR:
			// A signal, possibly a preemption request: let it happen.
			runtime.Gosched()
			// The runtime preempts a goroutine that has run 10 ms: a
			// wait that long is an idle spell, which goes on as an
			// ordinary blocking system call (giving the core back)
			// rather than being preempted every 10 ms until traffic
			// resumes.
			idle = true
			continue
		case syscall.EAGAIN, syscall.EBUSY:
			// The completion queue is full: the caller reaps it.
			if wait == 0 {
				return
			}
			wait = 0
			continue
		}
		panic(fmt.Sprintf("io_uring_enter: %v", e))
	}
}

// Kinds of operations, in the low bits of an entry's user data; the slot
// of the session is above them.
const (
	ringWake       = iota // the loop's eventfd (slot 0)
	ringRecvClient        // receive from the client (the up pump)
	ringRecvServer        // receive from the server (the down pump)
	ringSendServer        // a send to the server (the up pump's queue)
	ringSendClient        // a send to the client (the down pump's queue)
	ringCancel
	ringKindBits = 3
)

// ringLoop is the event loop. Sessions are handed to it and taken back
// through requests (post), which wake it with an eventfd.
type ringLoop struct {
	r     *uring
	evfd  int
	evbuf [8]byte

	mu   sync.Mutex
	reqs []ringReq

	slots []*ringSess // index 0 is the wake-up
	free  []uint32
	batch []ringReq

	// failed says the loop failed (fail). It is set under mu, so that
	// post, which checks it under mu, never queues a request fail will
	// not see; others read it without the lock (wantRing).
	failed atomic.Bool
	// graveyard keeps the sessions the loop held when it failed: the
	// kernel still has their buffers' addresses (see fail).
	graveyard []*ringSess
	// failNext makes the loop fail at its next wake-up (tests).
	failNext atomic.Bool
	// hand takes the statement events of the sessions the loop relays
	// to their sinks (handoff).
	hand *handoff
}

// ringReq is a request to the loop: adopt rs, let go of rs (leave), or
// send the handoff's batch (flush).
type ringReq struct {
	rs    *ringSess
	leave bool
	flush bool
}

// ringSess is a session while the loop holds it. Index 0 is the client
// side: the up pump reads fd[0] and its queue w[0] writes fd[1]; index 1
// is the server side.
type ringSess struct {
	s    *session
	slot uint32
	p    [2]*pump
	fd   [2]int
	w    [2]*ringWriter
	// recv and send say which operations are outstanding.
	recv, send [2]bool
	// err is how each pump ended, if it did.
	err     [2]error
	leaving bool
	// dead: the loop failed while it held the session (fail); released:
	// the loop closed left.
	dead, released bool
	// hand is the handoff of the loop the session went to, and handSeq
	// how many batches of statement events it had sent when the loop let
	// go of the session (ringReturn waits for them).
	hand    *handoff
	handSeq uint64
	// left is closed by the loop when it let go of the session;
	// swapped by the session's goroutine once it has connections again.
	left, swapped chan struct{}
}

var (
	ringOnce sync.Once
	ringInst *ringLoop
	ringErr  error
)

// sharedRing starts the process's event loop on first use. It returns nil
// and the reason when io_uring cannot be used here.
func sharedRing() (*ringLoop, error) {
	ringOnce.Do(func() {
		l, err := startRingLoop()
		if err != nil {
			ringErr = err
			return
		}
		// The loop keeps its core while it waits (see above).
		runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + 1)
		ringInst = l
	})
	return ringInst, ringErr
}

// startRingLoop starts an event loop (the process uses one, sharedRing;
// tests may start their own).
func startRingLoop() (*ringLoop, error) {
	l := &ringLoop{slots: []*ringSess{nil}}
	l.hand = newHandoff(func() { l.post(ringReq{flush: true}) })
	started := make(chan error)
	go l.run(started)
	if err := <-started; err != nil {
		return nil, err
	}
	return l, nil
}

// IOUringAvailable reports why the io_uring relay (Config.IOUring) cannot
// be used here, or nil if it can; it starts the process's event loop.
func IOUringAvailable() error {
	_, err := sharedRing()
	return err
}

// post hands a request to the loop.
func (l *ringLoop) post(q ringReq) {
	l.mu.Lock()
	if l.failed.Load() {
		l.mu.Unlock()
		if !q.leave && !q.flush {
			// Never adopted: the session goes on with goroutines.
			close(q.rs.left)
		}
		return
	}
	l.reqs = append(l.reqs, q)
	l.mu.Unlock()
	one := [8]byte{1}
	for {
		_, err := syscall.Write(l.evfd, one[:])
		if err != syscall.EINTR {
			return
		}
	}
}

func (l *ringLoop) armWake() {
	e := l.r.sqe()
	e.opcode = uringOpRead
	e.fd = int32(l.evfd)
	e.addr = uint64(uintptr(unsafe.Pointer(&l.evbuf[0])))
	e.len = 8
	e.userData = ringWake
}

// run is the loop. The ring is set up on the loop's own thread: with
// IORING_SETUP_SINGLE_ISSUER only the thread that created it may submit.
func (l *ringLoop) run(started chan error) {
	runtime.LockOSThread()
	r, err := newUring(uringEntries)
	if err != nil {
		started <- err
		return
	}
	fd, _, e := syscall.RawSyscall(syscall.SYS_EVENTFD2, 0, syscall.O_CLOEXEC, 0)
	if e != 0 {
		started <- os.NewSyscallError("eventfd2", e)
		return
	}
	l.r, l.evfd = r, int(fd)
	l.armWake()
	started <- nil
	l.serve()
	// The loop failed. Its thread must neither exit nor enter the ring
	// again (see fail): it waits here for good.
	select {}
}

// serve runs the loop until it fails: a panic outside the pumps (which
// recover per session) is a bug in the loop itself, and an unexpected
// io_uring_enter error leaves it unable to go on.
func (l *ringLoop) serve() {
	defer func() {
		if v := recover(); v != nil {
			l.fail(v, debug.Stack())
		}
	}()
	r := l.r
	for {
		r.enter(1, len(l.slots) == len(l.free)+1)
		head := atomic.LoadUint32(r.cqHead)
		for tail := atomic.LoadUint32(r.cqTail); head != tail; head++ {
			c := r.cqes[head&*r.cqMask]
			l.complete(c.userData, c.res)
			// Give the entry back at once: handling one may submit new
			// entries, whose completions need room.
			atomic.StoreUint32(r.cqHead, head+1)
		}
	}
}

// fail ends the loop after a panic (v, stack) outside the pumps. Its
// state cannot be trusted any more — a completion may have been taken
// from the ring without being handled, so bytes may be lost or sent
// twice — so the sessions it holds end, each with SQLSTATE XX000, and the
// proxy carries on without it: new sessions and those that were not in
// the loop are relayed by goroutines.
//
// The ring is not closed and the loop's thread neither exits nor enters
// it again: with IORING_SETUP_DEFER_TASKRUN, the operations still
// outstanding (receives into the pumps' buffers, sends from the queues)
// make progress only in that thread's io_uring_enter, or when it exits
// or the ring is closed — so, left alone, the kernel never touches that
// memory again (and graveyard keeps it allocated). Their sockets are shut
// down when the sessions end, since the ring's references keep them open.
func (l *ringLoop) fail(v any, stack []byte) {
	l.mu.Lock()
	l.failed.Store(true)
	pending := l.reqs
	l.reqs = nil
	l.mu.Unlock()
	// The statement events the loop holds go to their sinks, as far as
	// the loop's state allows: the sessions' ringReturn waits for what
	// was sent.
	func() {
		defer func() { _ = recover() }()
		l.hand.flush()
	}()
	logged := false
	for _, rs := range l.slots {
		if rs == nil || rs.released {
			continue
		}
		if !logged {
			logged = true
			rs.s.srv.log.Error("io_uring relay failed: the sessions it carried were ended; new sessions are relayed with goroutines",
				"panic", fmt.Sprint(v), "stack", string(stack))
		}
		rs.dead, rs.released = true, true
		if rs.handsOff() {
			rs.handSeq = rs.hand.sent
		}
		l.graveyard = append(l.graveyard, rs)
		e := &clientError{code: codeInternalError, msg: "pgveil: internal error in the io_uring relay; the session was ended", kind: "internal_error"}
		rs.err = [2]error{e, e}
		close(rs.left)
	}
	clear(l.slots)
	// Requests the loop had not handled yet (in batch, those after the
	// one it failed on; entries it handled are cleared or adopted): a
	// session it never adopted goes on with goroutines; a leave is moot.
	for _, q := range append(l.batch, pending...) {
		if q.rs != nil && !q.leave && !q.rs.released && q.rs.slot == 0 {
			q.rs.released = true
			close(q.rs.left)
		}
	}
	clear(l.batch)
}

func (l *ringLoop) complete(ud uint64, res int32) {
	kind, slot := ud&(1<<ringKindBits-1), uint32(ud>>ringKindBits)
	switch kind {
	case ringWake:
		if l.failNext.Load() {
			panic("io_uring loop: failure requested by a test")
		}
		l.mu.Lock()
		l.batch, l.reqs = l.reqs, l.batch[:0]
		l.mu.Unlock()
		for _, q := range l.batch {
			if q.flush {
				continue // below
			}
			if q.leave {
				if q.rs.slot != 0 && l.slots[q.rs.slot] == q.rs {
					l.leave(q.rs)
				}
				continue
			}
			l.adopt(q.rs)
		}
		clear(l.batch)
		l.hand.flush()
		l.armWake()
		return
	case ringCancel:
		return
	}
	rs := l.slots[slot]
	if rs == nil {
		return
	}
	switch kind {
	case ringRecvClient, ringRecvServer:
		l.received(rs, int(kind-ringRecvClient), res)
	case ringSendServer, ringSendClient:
		l.sent(rs, int(kind-ringSendServer), res)
	}
}

// adopt takes a session and starts receiving on both sides; bytes its
// pumps read before but did not relay yet are relayed first.
func (l *ringLoop) adopt(rs *ringSess) {
	if len(l.free) > 0 {
		rs.slot = l.free[len(l.free)-1]
		l.free = l.free[:len(l.free)-1]
		l.slots[rs.slot] = rs
	} else {
		rs.slot = uint32(len(l.slots))
		l.slots = append(l.slots, rs)
	}
	for i := range 2 {
		if rs.p[i].w > rs.p[i].r {
			if err := rs.process(i); err != nil {
				rs.err[i] = err
				l.leave(rs)
				return
			}
		}
	}
	for i := range 2 {
		l.send(rs, i)
		l.next(rs, i)
	}
}

// ringQueueLimit is how many bytes a pump may have queued for its socket
// before it stops reading (backpressure).
const ringQueueLimit = 4 * pumpBufferSize

// next submits the next receive of pump i, unless one is outstanding or
// its queue is over ringQueueLimit (the send's completion calls next
// again).
func (l *ringLoop) next(rs *ringSess, i int) {
	if rs.leaving || rs.recv[i] || rs.w[i].queued() > ringQueueLimit {
		return
	}
	p := rs.p[i]
	if p.w == len(p.buf) {
		p.compact(len(p.buf) + pumpBufferSize)
	}
	rs.recv[i] = true
	e := l.r.sqe()
	e.opcode = uringOpRecv
	e.fd = int32(rs.fd[i])
	e.addr = uint64(uintptr(unsafe.Pointer(unsafe.SliceData(p.buf[p.w:]))))
	e.len = uint32(len(p.buf) - p.w)
	e.userData = uint64(rs.slot)<<ringKindBits | uint64(ringRecvClient+i)
}

// send submits what queue i holds, unless a send of it is outstanding.
func (l *ringLoop) send(rs *ringSess, i int) {
	w := rs.w[i]
	if rs.leaving || rs.send[i] {
		return
	}
	if w.off == len(w.fly) {
		if len(w.out) == 0 {
			return
		}
		w.fly, w.out, w.off = w.out, w.fly[:0], 0
	}
	rs.send[i] = true
	b := w.fly[w.off:]
	e := l.r.sqe()
	e.opcode = uringOpSend
	e.fd = int32(rs.fd[1-i])
	e.addr = uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b))))
	e.len = uint32(len(b))
	e.opFlags = syscall.MSG_NOSIGNAL
	e.userData = uint64(rs.slot)<<ringKindBits | uint64(ringSendServer+i)
}

func (l *ringLoop) received(rs *ringSess, i int, res int32) {
	rs.recv[i] = false
	p := rs.p[i]
	if res > 0 {
		// Bytes read are kept even while leaving: the pump relays them
		// once it runs again.
		p.w += int(res)
		p.count.Add(int64(res))
	}
	if rs.leaving {
		l.maybeLet(rs)
		return
	}
	switch {
	case res > 0:
		if err := rs.process(i); err != nil {
			rs.err[i] = err
			l.leave(rs)
			return
		}
		l.send(rs, i)
		l.next(rs, i)
	case res == 0:
		rs.err[i] = &readError{io.EOF}
		l.leave(rs)
	case res == -int32(syscall.EINTR) || res == -int32(syscall.EAGAIN):
		l.next(rs, i)
	default:
		rs.err[i] = &readError{os.NewSyscallError("recv", syscall.Errno(-res))}
		l.leave(rs)
	}
}

// sent handles the completion of a send of queue i.
func (l *ringLoop) sent(rs *ringSess, i int, res int32) {
	rs.send[i] = false
	w := rs.w[i]
	if res > 0 {
		w.off += int(res)
	}
	if rs.leaving {
		l.maybeLet(rs)
		return
	}
	if res < 0 && res != -int32(syscall.EINTR) && res != -int32(syscall.EAGAIN) {
		rs.err[i] = &writeError{os.NewSyscallError("send", syscall.Errno(-res))}
		l.leave(rs)
		return
	}
	l.send(rs, i)
	l.next(rs, i)
}

// leave cancels what is outstanding for rs and lets it go once nothing is.
func (l *ringLoop) leave(rs *ringSess) {
	if rs.leaving {
		return
	}
	rs.leaving = true
	for i := range 2 {
		if rs.recv[i] {
			l.cancel(uint64(rs.slot)<<ringKindBits | uint64(ringRecvClient+i))
		}
		if rs.send[i] {
			l.cancel(uint64(rs.slot)<<ringKindBits | uint64(ringSendServer+i))
		}
	}
	l.maybeLet(rs)
}

func (l *ringLoop) cancel(target uint64) {
	e := l.r.sqe()
	e.opcode = uringOpAsyncCancel
	e.fd = -1
	e.addr = target
	e.userData = ringCancel
}

func (l *ringLoop) maybeLet(rs *ringSess) {
	if rs.recv[0] || rs.recv[1] || rs.send[0] || rs.send[1] {
		return
	}
	l.slots[rs.slot] = nil
	l.free = append(l.free, rs.slot)
	rs.slot = 0
	rs.released = true
	// The session's statement events go before what its goroutines
	// record next (ringReturn waits for them).
	if rs.handsOff() {
		rs.handSeq = rs.hand.flush() // rs.hand is l.hand: ringReturn waits on the handoff the number is from
	}
	close(rs.left)
}

// handsOff reports whether the session's statement events go through
// the loop's handoff (its tracker set hand in enterRing): only then does
// ringReturn wait for them.
func (rs *ringSess) handsOff() bool {
	t := rs.s.track
	return t != nil && t.hand != nil
}

// process relays what pump i has read, on the loop's thread. A panic (a
// bug) ends this session alone, as in session.runSafely.
func (rs *ringSess) process(i int) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = rs.s.internalError(r)
		}
	}()
	return rs.p[i].process()
}

// ringWriter is the queue of one socket while the loop holds the session:
// the pump's writes append to out; the loop sends fly (from off) with one
// io_uring send at a time and swaps the two when fly is sent. Only the
// loop's thread uses it (the pump's writes come from the loop's thread,
// under the syncWriter's lock).
type ringWriter struct {
	out, fly []byte
	off      int
}

// queued is how many bytes wait to be sent.
func (w *ringWriter) queued() int { return len(w.fly) - w.off + len(w.out) }

// rest returns what was not sent, in order.
func (w *ringWriter) rest() []byte {
	return append(append([]byte(nil), w.fly[w.off:]...), w.out...)
}

// Write queues b.
func (w *ringWriter) Write(b []byte) (int, error) {
	w.out = append(w.out, b...)
	return len(b), nil
}

// dupConnFD returns a duplicate (close-on-exec) of c's socket descriptor.
func dupConnFD(c net.Conn) (int, error) {
	rc := rawSyscallConn(c)
	if rc == nil {
		return -1, errors.New("not a plain socket")
	}
	nfd, derr := -1, error(nil)
	err := rc.Control(func(fd uintptr) {
		r, _, e := syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_DUPFD_CLOEXEC, 0)
		if e != 0 {
			derr = os.NewSyscallError("fcntl", e)
			return
		}
		nfd = int(r)
	})
	if err != nil {
		return -1, err
	}
	return nfd, derr
}

// fdConn makes a net.Conn of the socket fd (in the runtime's poller) and
// closes fd, which the connection has duplicated.
func fdConn(fd int) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), "socket")
	defer f.Close()
	return net.FileConn(f)
}

// shutdownOnClose is a connection over a socket that a failed loop's ring
// still references (which keeps the socket open after the last close of
// a descriptor): Close shuts the socket down first, so that the peer sees
// the end of the connection.
type shutdownOnClose struct{ net.Conn }

func (c shutdownOnClose) Close() error {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			_ = rc.Control(func(fd uintptr) { _ = syscall.Shutdown(int(fd), syscall.SHUT_RDWR) })
		}
	}
	return c.Conn.Close()
}

// CloseWrite is the connection's, as session.drainClient uses it.
func (c shutdownOnClose) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// closedConn stands in for a connection that could not be made again; every
// operation fails.
type closedConn struct{}

var errConnGone = errors.New("connection lost while leaving the io_uring loop")

func (closedConn) Read([]byte) (int, error)         { return 0, errConnGone }
func (closedConn) Write([]byte) (int, error)        { return 0, errConnGone }
func (closedConn) Close() error                     { return nil }
func (closedConn) LocalAddr() net.Addr              { return nil }
func (closedConn) RemoteAddr() net.Addr             { return nil }
func (closedConn) SetDeadline(time.Time) error      { return nil }
func (closedConn) SetReadDeadline(time.Time) error  { return nil }
func (closedConn) SetWriteDeadline(time.Time) error { return nil }
