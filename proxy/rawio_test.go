package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	return socketPair(t, "tcp", "127.0.0.1:0")
}

// socketPair returns both ends of a connection to a listener on address,
// closed when the test ends.
func socketPair(t *testing.T, network, address string) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen(network, address)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	a, err = net.Dial(network, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b = <-ch
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// bufConn collects what the pump writes.
type bufConn struct {
	net.Conn
	mu     sync.Mutex
	buf    bytes.Buffer
	writes int
}

func (c *bufConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes++
	return c.buf.Write(b)
}

// The last message and the FIN of a peer that closes right after sending
// arrive under one poller edge: the raw relay must still see the end.
func TestRawPumpSeesCloseAfterLastMessage(t *testing.T) {
	src, peer := tcpPair(t)
	payload := pgbenchSelect(t)
	if _, err := peer.Write(payload); err != nil {
		t.Fatal(err)
	}
	peer.Close()
	time.Sleep(50 * time.Millisecond) // both are queued before the pump starts
	out := &bufConn{}
	p := newPump(src, &syncWriter{conn: out, out: out}, &passHandler{}, DefaultMaxMessageSize, nil)
	if p.raw == nil {
		t.Fatal("a TCP connection did not get the raw relay")
	}
	done := make(chan error, 1)
	go func() { done <- p.run() }()
	select {
	case err := <-done:
		if !errors.Is(err, io.EOF) {
			t.Fatalf("pump ended with %v, want EOF", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the pump never saw the peer's close")
	}
	if !bytes.Equal(out.buf.Bytes(), payload) {
		t.Fatalf("relayed %d bytes, want the %d sent", out.buf.Len(), len(payload))
	}
}

// rawWriter writes everything, also more than a socket buffer holds, and
// a deadline interrupts a write the peer never drains.
func TestRawWriterLargeAndDeadline(t *testing.T) {
	a, b := tcpPair(t)
	w := newRawWriter(a)
	if w == nil {
		t.Fatal("no raw writer for a TCP connection")
	}
	big := bytes.Repeat([]byte("pgveil"), 4<<20) // 24 MiB
	got := make(chan int, 1)
	go func() {
		n, _ := io.Copy(io.Discard, io.LimitReader(b, int64(len(big))))
		got <- int(n)
	}()
	if n, err := w.Write(big); err != nil || n != len(big) {
		t.Fatalf("wrote %d of %d: %v", n, len(big), err)
	}
	if n := <-got; n != len(big) {
		t.Fatalf("peer read %d of %d", n, len(big))
	}
	_ = a.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := w.Write(big); err == nil {
		t.Fatal("a write nobody reads ended without error")
	}
	if newRawWriter(&bufConn{}) != nil {
		t.Fatal("a non-socket connection got a raw writer")
	}
}

// A raw write of a relayed message does not allocate, and neither does
// the raw read loop between messages.
func TestRawIOAllocatesNothing(t *testing.T) {
	a, b := tcpPair(t)
	w := newRawWriter(a)
	payload := pgbenchSelect(t)
	go func() { _, _ = io.Copy(io.Discard, b) }()
	if n := testing.AllocsPerRun(1000, func() {
		if _, err := w.Write(payload); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("a raw write allocates %.1f times", n)
	}

	// The read loop: a peer sends 2,000 results; the pump relays them to
	// a discarding writer. Allocations are counted for the whole loop,
	// minus a small allowance for its set-up (the callback, the error).
	src, peer := tcpPair(t)
	p := newPump(src, &syncWriter{conn: discardConn{}, out: discardConn{}}, &passHandler{}, DefaultMaxMessageSize, nil)
	const msgs = 2000
	go func() {
		for range msgs {
			if _, err := peer.Write(payload); err != nil {
				return
			}
		}
		peer.Close()
	}()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	err := p.run()
	runtime.ReadMemStats(&after)
	if !errors.Is(err, io.EOF) {
		t.Fatalf("pump ended with %v", err)
	}
	if n := after.Mallocs - before.Mallocs; n > 20 {
		t.Fatalf("relaying %d results allocated %d times", msgs, n)
	}
}

// A pump at rest (after ReadyForQuery) does not read again until new data
// comes; a FIN that arrived with the last message is found by probeRest,
// which ends the pump with EOF; a live peer is left alone.
func TestRawPumpRestAndProbe(t *testing.T) {
	payload := pgbenchSelect(t) // ends with ReadyForQuery
	run := func(p *pump) chan error {
		done := make(chan error, 1)
		go func() { done <- p.run() }()
		return done
	}
	waitRest := func(p *pump) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for p.restSeq.Load()&1 == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("the pump never came to rest (restSeq %d)", p.restSeq.Load())
			}
			time.Sleep(time.Millisecond)
		}
	}

	// A live peer: probing finds nothing, more data still flows. (Whether
	// the pump is at rest here depends on timing: when the payload lands
	// between RawRead's poller reset and the first read, the poller reports
	// its edge after the pump has read the data, and the pump makes the
	// read that says EAGAIN after all. Either way it waits in the poller.)
	src, peer := tcpPair(t)
	out := &bufConn{}
	p := newPump(src, &syncWriter{conn: out, out: out}, &passHandler{}, DefaultMaxMessageSize, nil)
	p.rest = serverRest
	done := run(p)
	waitRelayed := func(want int) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
			out.mu.Lock()
			n := out.buf.Len()
			out.mu.Unlock()
			if n == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("relayed %d bytes, want %d", n, want)
			}
		}
	}
	if _, err := peer.Write(payload); err != nil {
		t.Fatal(err)
	}
	waitRelayed(len(payload))
	if p.probeRest() {
		t.Fatal("a live peer was taken for gone")
	}
	if _, err := peer.Write(payload); err != nil {
		t.Fatal(err)
	}
	waitRelayed(2 * len(payload))
	peer.Close() // a FIN on its own raises its own edge
	select {
	case err := <-done:
		if !errors.Is(err, io.EOF) {
			t.Fatalf("pump ended with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the pump did not see a FIN that came on its own")
	}

	// The last message and the FIN under one edge: the pump rests, the
	// probe finds the FIN.
	src, peer = tcpPair(t)
	if _, err := peer.Write(payload); err != nil {
		t.Fatal(err)
	}
	peer.Close()
	time.Sleep(50 * time.Millisecond)
	out = &bufConn{}
	p = newPump(src, &syncWriter{conn: out, out: out}, &passHandler{}, DefaultMaxMessageSize, nil)
	p.rest = serverRest
	done = run(p)
	waitRest(p)
	select {
	case err := <-done:
		t.Fatalf("pump ended before the probe: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	if !p.probeRest() {
		t.Fatal("the probe did not find the FIN")
	}
	select {
	case err := <-done:
		if !errors.Is(err, io.EOF) {
			t.Fatalf("pump ended with %v, want EOF", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the probe did not end the pump")
	}
}
