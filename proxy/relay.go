package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// pumpBufferSize is the read buffer of each pump. 32 KiB holds a typical
// result batch; larger messages stream through it.
const pumpBufferSize = 32 << 10

// msgClass says how a pump treats one message type.
type msgClass uint8

const (
	// classStream messages pass through as their bytes arrive.
	classStream msgClass = iota
	// classPeek messages are buffered whole and shown to the handler, then
	// pass through unchanged in the same write as their neighbours.
	classPeek
	// classIntercept messages are buffered whole and given to the handler,
	// which writes whatever replaces them (possibly nothing).
	classIntercept
	// classReplace messages are buffered whole and given to the handler's
	// replace method, which returns what to relay in their place: the
	// message itself (then it passes in the same write as its neighbours,
	// like a peeked one) or other bytes. The handler must not write to the
	// pump's destination itself.
	classReplace
)

// replacer is implemented by handlers that use classReplace.
type replacer interface {
	// replace returns the bytes to relay for msg (msg itself to relay it
	// unchanged). The slice msg is only valid during the call.
	replace(typ byte, msg []byte) ([]byte, error)
}

// errStopAfter, returned by a handler, relays the current message and then
// stops the pump with errStopped.
var errStopAfter = errors.New("stop after this message")

// errStopped is returned by pump.run after a handler asked to stop.
var errStopped = errors.New("pump stopped")

// protocolError is a malformed message: the session ends with SQLSTATE 08P01.
type protocolError struct{ msg string }

func (e *protocolError) Error() string { return e.msg }

// handler decides how a pump treats the messages of one direction.
type handler interface {
	// class returns how messages of type typ are relayed.
	class(typ byte) msgClass
	// header is called for each classStream message with its length field.
	header(typ byte, length int) error
	// message is called with a whole classPeek or classIntercept message,
	// header included. The slice is only valid during the call.
	message(typ byte, msg []byte) error
}

// syncWriter serialises writes to one connection and remembers whether the
// last write ended inside a message, so that another goroutine may inject a
// whole message (an ErrorResponse, a Terminate) only between messages.
type syncWriter struct {
	mu   sync.Mutex
	conn net.Conn
	// out writes to conn: a rawWriter for plain sockets, else conn itself;
	// a ringWriter while the io_uring loop holds the session.
	out    io.Writer
	mid    bool
	broken error
	// queued holds what the io_uring loop could not write before it let
	// go of the session; it goes out before anything else.
	queued []byte
}

// setConn makes c the connection written to.
func (w *syncWriter) setConn(c net.Conn) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.setConnLocked(c)
}

func (w *syncWriter) setConnLocked(c net.Conn) {
	w.conn, w.out = c, c
	if r := newRawWriter(c); r != nil {
		w.out = r
	}
}

// toRing makes the io_uring loop's writer rw the one written to.
func (w *syncWriter) toRing(rw *ringWriter) {
	w.mu.Lock()
	defer w.mu.Unlock()
	rw.out = append(rw.out, w.queued...)
	w.queued = nil
	w.out = rw
}

// fromRing makes c the connection written to again, after queued (which
// the writer keeps).
func (w *syncWriter) fromRing(c net.Conn, queued []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.setConnLocked(c)
	if len(queued) > 0 {
		w.queued = queued
	}
}

// sendQueued writes what the loop left queued, if anything, waiting at
// most queuedWriteTimeout for a peer that does not read; a failure breaks
// the writer, as a failed write does.
func (w *syncWriter) sendQueued() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.broken != nil || len(w.queued) == 0 {
		return
	}
	_ = w.conn.SetWriteDeadline(time.Now().Add(queuedWriteTimeout))
	if err := w.flushQueued(); err != nil {
		w.broken = err
	}
	_ = w.conn.SetWriteDeadline(time.Time{})
}

// queuedWriteTimeout bounds sendQueued.
const queuedWriteTimeout = 10 * time.Second

// flushQueued writes what the loop left queued; the caller holds mu.
func (w *syncWriter) flushQueued() error {
	if len(w.queued) == 0 {
		return nil
	}
	_, err := w.out.Write(w.queued)
	w.queued = nil
	return err
}

// write writes b; mid says whether b ends inside a message.
func (w *syncWriter) write(b []byte, mid bool) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.broken != nil {
		return w.broken
	}
	if err := w.flushQueued(); err != nil {
		w.broken = err
		return err
	}
	if _, err := w.out.Write(b); err != nil {
		w.broken = err
		return err
	}
	w.mid = mid
	return nil
}

// inject writes the whole message b if the stream is between messages. It
// reports whether b was written.
func (w *syncWriter) inject(b []byte) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.broken != nil || w.mid {
		return false
	}
	if err := w.flushQueued(); err != nil {
		w.broken = err
		return false
	}
	if _, err := w.out.Write(b); err != nil {
		w.broken = err
		return false
	}
	return true
}

// Message types after which a peer waits for the other side: a client
// after Sync, Query, FunctionCall or Flush; the server after
// ReadyForQuery.
var (
	clientRest = restSet('S', 'Q', 'F', 'H')
	serverRest = restSet('Z')
)

func restSet(types ...byte) *[256]bool {
	var t [256]bool
	for _, c := range types {
		t[c] = true
	}
	return &t
}

// pump relays one direction of a session: it reads from src, frames the
// bytes into messages and writes them to dst.
type pump struct {
	src net.Conn
	// raw, for a plain socket, reads src with raw system calls (rawio.go).
	raw       syscall.RawConn
	dst       *syncWriter
	h         handler
	maxSize   int
	buf       []byte
	r, w      int // unread bytes are buf[r:w]
	remaining int // body bytes of the current streaming message not yet relayed
	// last is the type of the last message whose header was read; rest,
	// if set, lists the types after which the peer waits for the other
	// side (see runRaw).
	last byte
	rest *[256]bool
	// restSeq is odd while the pump waits at rest without having seen
	// EAGAIN, and counts such waits; peerGone is set by probeRest.
	restSeq  atomic.Uint64
	peerGone atomic.Bool
	// count accumulates the bytes read from src, for statistics.
	count *atomic.Int64
	// stamp, if set, is the session's clock of this side (session.stamp):
	// process resets it for each buffer.
	stamp *int64
}

// newPump returns a pump from src to dst; count, if not nil, accumulates
// the bytes read.
func newPump(src net.Conn, dst *syncWriter, h handler, maxSize int, count *atomic.Int64) *pump {
	if count == nil {
		count = new(atomic.Int64)
	}
	return &pump{src: src, raw: rawSyscallConn(src), dst: dst, h: h, maxSize: maxSize, buf: make([]byte, pumpBufferSize), count: count}
}

// run relays until src or dst fails, a message is malformed, or the handler
// stops it. Read errors are returned as *readError so callers can tell
// which side failed.
func (p *pump) run() error {
	if p.w > p.r {
		// Bytes read before the pump last stopped (for the io_uring
		// loop, see session.relay) are relayed before it reads again.
		if err := p.process(); err != nil {
			return err
		}
	}
	if p.raw != nil {
		return p.runRaw()
	}
	for {
		n, err := p.src.Read(p.buf[p.w:])
		p.w += n
		if n > 0 {
			p.count.Add(int64(n))
			if perr := p.process(); perr != nil {
				return perr
			}
		}
		if err != nil {
			return &readError{err}
		}
	}
}

// runRaw is run for a plain socket. The whole relay loop runs inside one
// syscall.RawConn.Read callback: it reads with raw system calls, relays
// what it read, and returns to the runtime's poller when a read says
// EAGAIN — or, to spare that read, when the socket is drained and the
// peer is at rest: a read returned less than the free buffer space (the
// receive queue is empty) and ended with a complete message after which
// the peer waits for the other side (a client's Sync or Query, the
// server's ReadyForQuery). New data raises a new edge of the
// edge-triggered poller, so nothing is missed — except a FIN (or reset)
// that arrived with the last message under the same edge. probeRest
// finds those: the prober (Server.restProber) peeks once at every pump
// that has rested for a while.
func (p *pump) runRaw() error {
	var rerr, perr error
	fn := func(fd uintptr) bool {
		if seq := p.restSeq.Load(); seq&1 == 1 {
			p.restSeq.Store(seq + 1)
		}
		for {
			if p.w == len(p.buf) {
				p.compact(len(p.buf) + pumpBufferSize)
			}
			n, e := rawRead(fd, p.buf[p.w:])
			switch e {
			case 0:
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false
			default:
				rerr = os.NewSyscallError("read", e)
				return true
			}
			if n == 0 {
				rerr = io.EOF
				return true
			}
			space := len(p.buf) - p.w
			p.w += n
			p.count.Add(int64(n))
			if perr = p.process(); perr != nil {
				return true
			}
			if p.rest != nil && n < space && p.r == p.w && p.remaining == 0 && p.rest[p.last] {
				p.restSeq.Add(1)
				return false
			}
		}
	}
	err := p.raw.Read(fn)
	switch {
	case perr != nil:
		return perr
	case rerr != nil:
		return &readError{rerr}
	case err != nil && p.peerGone.Load():
		return &readError{io.EOF}
	case err != nil:
		return &readError{err}
	}
	return &readError{io.ErrUnexpectedEOF}
}

// probeRest looks once at a pump that has been at rest since seq (see
// runRaw): if its peer closed the connection or reset it meanwhile, the
// pump is woken (a read deadline in the past) and ends as if its read had
// returned EOF. It reports whether the peer is gone.
func (p *pump) probeRest() bool {
	if p.raw == nil {
		return false
	}
	gone := false
	_ = p.raw.Control(func(fd uintptr) {
		var b [1]byte
		n, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1, syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		gone = e == 0 && n == 0 || e != 0 && e != syscall.EAGAIN && e != syscall.EINTR
	})
	if gone {
		p.peerGone.Store(true)
		_ = p.src.SetReadDeadline(time.Unix(1, 0))
	}
	return gone
}

// readError wraps a failure to read from the pump's source.
type readError struct{ err error }

func (e *readError) Error() string { return "read: " + e.err.Error() }
func (e *readError) Unwrap() error { return e.err }

// writeError wraps a failure to write to the pump's destination.
type writeError struct{ err error }

func (e *writeError) Error() string { return "write: " + e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }

// flush writes buf[from:to] to the destination.
func (p *pump) flush(from, to int) error {
	if from == to {
		return nil
	}
	if err := p.dst.write(p.buf[from:to], p.remaining > 0); err != nil {
		return &writeError{err}
	}
	return nil
}

// process relays every complete message (and every available byte of a
// streaming message) in buf[r:w], then keeps the incomplete rest.
func (p *pump) process() error {
	if p.stamp == nil {
		return p.messages()
	}
	*p.stamp = 0
	err := p.messages()
	*p.stamp = -1
	return err
}

// messages relays the messages of the buffer (process).
func (p *pump) messages() error {
	start := p.r // start of the bytes to pass through unchanged
	need := 0    // bytes a buffered message needs in all
	stop := false
	for !stop {
		if p.remaining > 0 {
			k := min(p.remaining, p.w-p.r)
			p.r += k
			p.remaining -= k
			if p.remaining > 0 {
				break
			}
		}
		if p.w-p.r < 5 {
			break
		}
		typ := p.buf[p.r]
		p.last = typ
		length := int(binary.BigEndian.Uint32(p.buf[p.r+1 : p.r+5]))
		if length < 4 || length > p.maxSize {
			_ = p.flush(start, p.r)
			if length < 4 {
				return &protocolError{fmt.Sprintf("invalid message length %d for message type %q", length, typ)}
			}
			return &protocolError{fmt.Sprintf("message of type %q is %d bytes, more than the limit of %d", typ, length, p.maxSize)}
		}
		switch p.h.class(typ) {
		case classStream:
			if err := p.h.header(typ, length); err != nil {
				if err != errStopAfter {
					if ferr := p.flush(start, p.r); ferr != nil {
						return ferr
					}
					return err
				}
				stop = true
			}
			p.r += 5
			p.remaining = length - 4
		case classPeek:
			if p.w-p.r < length+1 {
				need = length + 1
				stop = true
				continue
			}
			err := p.h.message(typ, p.buf[p.r:p.r+1+length])
			p.r += length + 1
			if err == errStopAfter {
				stop = true
			} else if err != nil {
				if ferr := p.flush(start, p.r-length-1); ferr != nil {
					return ferr
				}
				return err
			}
		case classReplace:
			if p.w-p.r < length+1 {
				need = length + 1
				stop = true
				continue
			}
			msg := p.buf[p.r : p.r+1+length]
			out, err := p.h.(replacer).replace(typ, msg)
			if err != nil {
				if ferr := p.flush(start, p.r); ferr != nil {
					return ferr
				}
				return err
			}
			if len(out) == len(msg) && (len(out) == 0 || &out[0] == &msg[0]) {
				p.r += length + 1
				continue
			}
			if err := p.flush(start, p.r); err != nil {
				return err
			}
			p.r += length + 1
			start = p.r
			if err := p.dst.write(out, false); err != nil {
				return &writeError{err}
			}
		case classIntercept:
			if p.w-p.r < length+1 {
				need = length + 1
				stop = true
				continue
			}
			if err := p.flush(start, p.r); err != nil {
				return err
			}
			msg := p.buf[p.r : p.r+1+length]
			p.r += length + 1
			start = p.r
			if err := p.h.message(typ, msg); err == errStopAfter {
				stop = true
			} else if err != nil {
				return err
			}
		}
	}
	if err := p.flush(start, p.r); err != nil {
		return err
	}
	if stop && need == 0 {
		return errStopped
	}
	p.compact(need)
	return nil
}

// compact moves the unread bytes to the front of the buffer, growing it when
// a whole message of need bytes must fit, and shrinking it back afterwards.
func (p *pump) compact(need int) {
	unread := p.w - p.r
	switch {
	case need > len(p.buf):
		nb := make([]byte, need)
		copy(nb, p.buf[p.r:p.w])
		p.buf = nb
	case need == 0 && len(p.buf) > pumpBufferSize && unread <= pumpBufferSize:
		nb := make([]byte, pumpBufferSize)
		copy(nb, p.buf[p.r:p.w])
		p.buf = nb
	default:
		if p.r == 0 {
			return
		}
		copy(p.buf, p.buf[p.r:p.w])
	}
	p.r, p.w = 0, unread
}
