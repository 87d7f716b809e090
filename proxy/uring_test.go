package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// The io_uring relay's tests use real TCP sockets on both sides (the loop
// takes only plain sockets) and a scripted server.

// tcpUpstream hands each dial of the proxy to the test as the server end
// of a loopback TCP connection.
type tcpUpstream struct {
	t     *testing.T
	conns chan net.Conn
	unix  bool
}

func (f *tcpUpstream) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	pair := tcpPair
	if f.unix {
		pair = unixPair
	}
	a, b := pair(f.t)
	f.conns <- b
	return a, nil
}

// unixPair is tcpPair over a Unix stream socket (an upstream reached
// through PostgreSQL's socket directory).
func unixPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	return socketPair(t, "unix", t.TempDir()+"/.s.PGSQL.5432")
}

func (f *tcpUpstream) next(t *testing.T) net.Conn {
	t.Helper()
	select {
	case c := <-f.conns:
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("proxy did not dial the upstream")
		return nil
	}
}

func ringServer(t *testing.T) (*Server, *tcpUpstream) {
	t.Helper()
	f := &tcpUpstream{t: t, conns: make(chan net.Conn, 8)}
	up, err := ParseUpstream("postgres://fake:5432/db?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	up.Dial = f.dial
	srv, err := New(Config{Upstream: up, ConnectTimeout: 5 * time.Second, StartupTimeout: 5 * time.Second, IOUring: true})
	if err != nil {
		t.Fatalf("io_uring relay unavailable: %v", err)
	}
	return srv, f
}

// ringSession connects a client over TCP, runs the startup, and returns
// the client and server ends once the session is in the loop.
func ringSession(t *testing.T, srv *Server, f *tcpUpstream) (client, server net.Conn, done chan struct{}) {
	t.Helper()
	client, server, done = startedSession(t, srv, f)
	waitRing(t, srv, true)
	return client, server, done
}

// startedSession connects a client over TCP and runs the startup.
func startedSession(t *testing.T, srv *Server, f *tcpUpstream) (client, server net.Conn, done chan struct{}) {
	t.Helper()
	client, p := tcpPair(t)
	done = serveSession(t, srv, client, p)
	_ = client.SetDeadline(time.Now().Add(20 * time.Second))
	write(t, client, startupBytes(t, map[string]string{"user": "alice", "database": "app"}))
	server = f.next(t)
	readMsgStartup(t, server)
	write(t, server, encode(t, &pgproto3.AuthenticationOk{},
		&pgproto3.BackendKeyData{ProcessID: 7, SecretKey: []byte{1, 2, 3, 4}},
		&pgproto3.ReadyForQuery{TxStatus: 'I'}))
	for range 3 {
		readMsg(t, client)
	}
	return client, server, done
}

// waitRing waits until every session of srv is in the loop (or none is).
func waitRing(t *testing.T, srv *Server, in bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		all := true
		for _, s := range srv.appendSessions(nil) {
			if s.ringActive.Load() != in {
				all = false
			}
		}
		if all {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("sessions did not reach ringActive=%v", in)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// roundTrip sends a query and its answer through the session.
func roundTrip(t *testing.T, client, server net.Conn, tag string) {
	t.Helper()
	q := encode(t, &pgproto3.Query{String: "select '" + tag + "'"})
	write(t, client, q)
	if got := readN(t, server, len(q)); !bytes.Equal(got, q) {
		t.Fatalf("server got %q, want %q", got, q)
	}
	a := encode(t, &pgproto3.CommandComplete{CommandTag: []byte(tag)}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	write(t, server, a)
	if got := readN(t, client, len(a)); !bytes.Equal(got, a) {
		t.Fatalf("client got %q, want %q", got, a)
	}
}

func TestRingRelay(t *testing.T) {
	t.Run("tcp", func(t *testing.T) { testRingRelay(t, false) })
	t.Run("unix upstream", func(t *testing.T) { testRingRelay(t, true) })
}

func testRingRelay(t *testing.T, unix bool) {
	srv, f := ringServer(t)
	f.unix = unix
	client, server, done := ringSession(t, srv, f)
	// Byte at a time from the client, a result larger than the buffers,
	// notices and notifications: exactly the bytes sent.
	relayRoundTrip(t, client, server)
	waitRing(t, srv, true)
	for i := range 100 {
		roundTrip(t, client, server, "SELECT "+string(rune('a'+i%26)))
	}
	// Terminate: the server sees it, closes, and the session ends.
	write(t, client, []byte{'X', 0, 0, 0, 4})
	if got := readN(t, server, 5); got[0] != 'X' {
		t.Fatalf("server got %q, want Terminate", got)
	}
	server.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("session did not end after Terminate")
	}
}

// A client that does not read a large result stalls neither the loop nor
// another session; the result arrives intact when it reads.
func TestRingSlowClient(t *testing.T) {
	srv, f := ringServer(t)
	slow, slowServer, _ := ringSession(t, srv, f)
	other, otherServer, _ := ringSession(t, srv, f)
	write(t, slow, encode(t, &pgproto3.Query{String: "select big"}))
	readMsg(t, slowServer)
	row := encode(t, &pgproto3.DataRow{Values: [][]byte{bytes.Repeat([]byte("y"), 8000)}})
	var want []byte
	for range 2000 { // 16 MB: far more than the socket buffers hold
		want = append(want, row...)
	}
	want = append(want, encode(t, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 2000")}, &pgproto3.ReadyForQuery{TxStatus: 'I'})...)
	sent := writeAsync(slowServer, want)
	time.Sleep(200 * time.Millisecond)
	select {
	case err := <-sent:
		t.Fatalf("the server wrote 16 MB to a client that reads nothing (err %v)", err)
	default:
	}
	for i := range 20 {
		roundTrip(t, other, otherServer, "SELECT "+string(rune('a'+i)))
	}
	got := readN(t, slow, len(want))
	if !bytes.Equal(got, want) {
		t.Fatal("the large result arrived changed")
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	roundTrip(t, slow, slowServer, "SELECT 1")
	waitRing(t, srv, true)
}

// An upstream that dies gives the client the proxy's FATAL 08006.
func TestRingUpstreamLost(t *testing.T) {
	srv, f := ringServer(t)
	client, server, done := ringSession(t, srv, f)
	roundTrip(t, client, server, "SELECT 1")
	write(t, client, encode(t, &pgproto3.Query{String: "select pg_sleep(10)"}))
	readMsg(t, server)
	server.Close()
	msg := readMsg(t, client)
	if msg[0] != 'E' || errorCode(msg) != "08006" {
		t.Fatalf("client got %q, want ErrorResponse 08006", msg)
	}
	<-done
}

// A client that leaves mid-query: the server gets a CancelRequest for its
// backend on a new connection and a Terminate on the session's.
func TestRingClientGone(t *testing.T) {
	srv, f := ringServer(t)
	client, server, done := ringSession(t, srv, f)
	write(t, client, encode(t, &pgproto3.Query{String: "select pg_sleep(10)"}))
	readMsg(t, server)
	client.Close()
	cancel := f.next(t)
	b := readN(t, cancel, 16)
	if binary.BigEndian.Uint32(b[4:8]) != cancelRequestCode || binary.BigEndian.Uint32(b[8:12]) != 7 {
		t.Fatalf("cancel connection got %x, want a CancelRequest for pid 7", b)
	}
	if got := readN(t, server, 5); got[0] != 'X' {
		t.Fatalf("server got %q, want Terminate", got)
	}
	<-done
}

// A malformed message in the loop ends that session with 08P01 and leaves
// the others alone.
func TestRingMalformed(t *testing.T) {
	srv, f := ringServer(t)
	bad, _, badDone := ringSession(t, srv, f)
	good, goodServer, _ := ringSession(t, srv, f)
	write(t, bad, []byte{'Q', 0, 0, 0, 2})
	msg := readMsg(t, bad)
	if msg[0] != 'E' || errorCode(msg) != "08P01" {
		t.Fatalf("client got %q, want ErrorResponse 08P01", msg)
	}
	<-badDone
	roundTrip(t, good, goodServer, "SELECT 1")
}

// Shutdown takes idle sessions out of the loop and ends them with 57P01;
// a busy one ends at its ReadyForQuery, after its answer.
func TestRingShutdown(t *testing.T) {
	srv, f := ringServer(t)
	idle, _, idleDone := ringSession(t, srv, f)
	busy, busyServer, busyDone := ringSession(t, srv, f)
	write(t, busy, encode(t, &pgproto3.Query{String: "select 1"}))
	readMsg(t, busyServer)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(ctx) }()
	msg := readMsg(t, idle)
	if msg[0] != 'E' || errorCode(msg) != "57P01" {
		t.Fatalf("idle client got %q, want ErrorResponse 57P01", msg)
	}
	<-idleDone
	a := encode(t, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	write(t, busyServer, a)
	if got := readN(t, busy, len(a)); !bytes.Equal(got, a) {
		t.Fatalf("busy client got %q, want its answer", got)
	}
	msg = readMsg(t, busy)
	if msg[0] != 'E' || errorCode(msg) != "57P01" {
		t.Fatalf("busy client got %q after its answer, want ErrorResponse 57P01", msg)
	}
	<-busyDone
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(busy); err != nil {
		t.Fatal(err)
	}
}

// Relaying a message that needs no change allocates nothing in the loop
// either (the queues reuse their buffers).
func TestRingAllocatesNothing(t *testing.T) {
	srv, f := ringServer(t)
	client, server, _ := ringSession(t, srv, f)
	q := encode(t, &pgproto3.Query{String: "select 1"})
	a := encode(t, &pgproto3.DataRow{Values: [][]byte{[]byte("1")}}, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	qb, ab := make([]byte, len(q)), make([]byte, len(a))
	var failed error
	trip := func() {
		if _, err := client.Write(q); err != nil {
			failed = err
		} else if _, err := io.ReadFull(server, qb); err != nil {
			failed = err
		} else if _, err := server.Write(a); err != nil {
			failed = err
		} else if _, err := io.ReadFull(client, ab); err != nil {
			failed = err
		}
	}
	for range 50 {
		trip()
	}
	// Not testing.AllocsPerRun: it sets GOMAXPROCS to 1, and the loop
	// keeps a core of its own.
	const n = 2000
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range n {
		trip()
	}
	runtime.ReadMemStats(&after)
	allocs := float64(after.Mallocs-before.Mallocs) / n
	if failed != nil {
		t.Fatal(failed)
	}
	if !bytes.Equal(qb, q) || !bytes.Equal(ab, a) {
		t.Fatal("relayed bytes differ")
	}
	if allocs > 0.05 {
		t.Errorf("%.2f allocations per round trip through the io_uring loop, want 0", allocs)
	}
	waitRing(t, srv, true)
}

// TestRingLoopFails: when the loop itself fails (a panic outside the
// pumps, or an io_uring_enter error), the sessions it holds end with
// XX000 and their sockets are shut down (the ring's references would keep
// them open); the process goes on, and new sessions are relayed with
// goroutines. The test uses a loop of its own, not the process's.
func TestRingLoopFails(t *testing.T) {
	srv, f := ringServer(t)
	l, err := startRingLoop()
	if err != nil {
		t.Fatal(err)
	}
	srv.ring = l
	idle, idleServer, idleDone := ringSession(t, srv, f)
	busy, busyServer, busyDone := ringSession(t, srv, f)
	q := encode(t, &pgproto3.Query{String: "select 1"})
	write(t, busy, q)
	if got := readN(t, busyServer, len(q)); !bytes.Equal(got, q) {
		t.Fatalf("server got %q", got)
	}

	l.failNext.Store(true)
	one := [8]byte{1}
	if _, err := syscall.Write(l.evfd, one[:]); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name           string
		client, server net.Conn
		done           chan struct{}
	}{{"idle", idle, idleServer, idleDone}, {"busy", busy, busyServer, busyDone}} {
		msg := readMsg(t, c.client)
		if msg[0] != 'E' || errorCode(msg) != codeInternalError {
			t.Fatalf("%s client got %q, want ErrorResponse XX000", c.name, msg)
		}
		if rest, err := io.ReadAll(c.client); err != nil || len(rest) > 0 {
			t.Fatalf("%s client: %q, %v after the error, want the end of the connection", c.name, rest, err)
		}
		_ = c.server.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadAll(c.server); err != nil {
			t.Fatalf("%s upstream connection not closed: %v", c.name, err)
		}
		<-c.done
	}
	if !l.failed.Load() || srv.IOUring() || srv.Stats().RingUp {
		t.Fatal("the loop is not marked failed, or the server still reports the io_uring relay in use")
	}

	// The proxy goes on: a new session works, relayed with goroutines.
	client, server, _ := startedSession(t, srv, f)
	for i := range 3 {
		roundTrip(t, client, server, fmt.Sprint("after ", i))
	}
	for _, s := range srv.appendSessions(nil) {
		if s.ringActive.Load() {
			t.Fatal("a session entered the failed loop")
		}
	}
}
