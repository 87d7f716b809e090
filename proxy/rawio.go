package proxy

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// The relay's reads and writes on plain TCP and Unix sockets go through
// rawConn instead of net.Conn's Read and Write. The difference is how the
// system call is made: net.Conn uses syscall.Syscall, which tells the Go
// scheduler that the goroutine entered a system call that may block. When
// every P of the process is idle (between two queries of a sidecar, or with
// one client), the runtime's monitor thread sleeps, and each such system
// call wakes it with a futex, after which it polls every 20 µs for a
// millisecond. At one query per ~50 µs that is a thread wake-up and dozens
// of context switches per query — measured as a third of the proxy's CPU
// time. The sockets are non-blocking (the runtime's poller waits for
// readiness), so a read or write never blocks and syscall.RawSyscall, which
// skips the scheduler's bookkeeping, is correct: EAGAIN makes
// syscall.RawConn wait in the poller exactly as net.Conn would, and
// deadlines and Close still interrupt that wait.
//
// TLS connections keep net.Conn (the bytes go through crypto/tls).

// rawConn reads and writes one socket with raw system calls. Reads and
// writes may run concurrently (one reader, one writer); each direction has
// its own state, so neither allocates per call.
type rawConn struct {
	rc syscall.RawConn

	rbuf   []byte
	rn     int
	rerrno syscall.Errno
	readFn func(fd uintptr) bool

	wbuf    []byte
	werrno  syscall.Errno
	writeFn func(fd uintptr) bool
}

// newRawConn returns a rawConn for c, or nil when c is not a plain socket
// (a TLS connection, a net.Pipe in tests).
func newRawConn(c net.Conn) *rawConn {
	var sc syscall.Conn
	switch c := c.(type) {
	case *net.TCPConn:
		sc = c
	case *net.UnixConn:
		sc = c
	default:
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	r := &rawConn{rc: rc}
	r.readFn = func(fd uintptr) bool {
		for {
			n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(r.rbuf))), uintptr(len(r.rbuf)))
			switch e {
			case 0:
				r.rn, r.rerrno = int(n), 0
				return true
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false
			default:
				r.rn, r.rerrno = 0, e
				return true
			}
		}
	}
	r.writeFn = func(fd uintptr) bool {
		for len(r.wbuf) > 0 {
			n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(r.wbuf))), uintptr(len(r.wbuf)))
			switch e {
			case 0:
				r.wbuf = r.wbuf[n:]
			case syscall.EINTR:
			case syscall.EAGAIN:
				return false
			default:
				r.werrno = e
				return true
			}
		}
		return true
	}
	return r
}

// Read reads into b like net.Conn.Read: at least one byte, or an error
// (io.EOF when the peer closed its side).
func (r *rawConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	r.rbuf = b
	err := r.rc.Read(r.readFn)
	r.rbuf = nil
	switch {
	case err != nil:
		return 0, err
	case r.rerrno != 0:
		return 0, os.NewSyscallError("read", r.rerrno)
	case r.rn == 0:
		return 0, io.EOF
	}
	return r.rn, nil
}

// Write writes all of b, waiting for the socket to drain when it is full.
func (r *rawConn) Write(b []byte) (int, error) {
	r.wbuf, r.werrno = b, 0
	err := r.rc.Write(r.writeFn)
	n := len(b) - len(r.wbuf)
	r.wbuf = nil
	switch {
	case err != nil:
		return n, err
	case r.werrno != 0:
		return n, os.NewSyscallError("write", r.werrno)
	}
	return n, nil
}
