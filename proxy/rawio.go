package proxy

import (
	"net"
	"os"
	"syscall"
	"unsafe"
)

// The relay's reads (pump.runRaw) and writes (rawWriter) on plain TCP and
// Unix sockets use syscall.RawConn with raw system calls instead of
// net.Conn's Read and Write. The difference is how the
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
// deadlines and Close still interrupt that wait. (A pump that always finds
// more data to read notices a Close at its next write to the other side,
// which is closed too when a session ends.)
//
// TLS connections keep net.Conn (the bytes go through crypto/tls).

// rawSyscallConn returns the syscall.RawConn of c, or nil when c is not a
// plain socket (a TLS connection, a net.Pipe in tests).
func rawSyscallConn(c net.Conn) syscall.RawConn {
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
	return rc
}

// rawRead reads from fd into b with one raw system call.
func rawRead(fd uintptr, b []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	return int(n), e
}

// rawWriter writes one socket with raw system calls. Its state lives in
// the struct so that a write does not allocate; callers serialise writes.
type rawWriter struct {
	rc      syscall.RawConn
	wbuf    []byte
	werrno  syscall.Errno
	writeFn func(fd uintptr) bool
}

// newRawWriter returns a rawWriter for c, or nil when c is not a plain
// socket.
func newRawWriter(c net.Conn) *rawWriter {
	rc := rawSyscallConn(c)
	if rc == nil {
		return nil
	}
	w := &rawWriter{rc: rc}
	w.writeFn = func(fd uintptr) bool {
		for len(w.wbuf) > 0 {
			n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(w.wbuf))), uintptr(len(w.wbuf)))
			switch e {
			case 0:
				w.wbuf = w.wbuf[n:]
			case syscall.EINTR:
			case syscall.EAGAIN:
				return false
			default:
				w.werrno = e
				return true
			}
		}
		return true
	}
	return w
}

// Write writes all of b, waiting in the runtime's poller while the socket
// is full.
func (w *rawWriter) Write(b []byte) (int, error) {
	w.wbuf, w.werrno = b, 0
	err := w.rc.Write(w.writeFn)
	n := len(b) - len(w.wbuf)
	w.wbuf = nil
	switch {
	case err != nil:
		return n, err
	case w.werrno != 0:
		return n, os.NewSyscallError("write", w.werrno)
	}
	return n, nil
}
