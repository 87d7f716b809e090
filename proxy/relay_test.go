package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// discardConn is a net.Conn that accepts and drops every write.
type discardConn struct{ net.Conn }

func (discardConn) Write(b []byte) (int, error) { return len(b), nil }

// passHandler relays everything, peeking at ReadyForQuery as sessions do.
type passHandler struct{ n int }

func (h *passHandler) class(typ byte) msgClass {
	if typ == 'Z' {
		return classPeek
	}
	return classStream
}
func (h *passHandler) header(typ byte, length int) error  { return nil }
func (h *passHandler) message(typ byte, msg []byte) error { h.n++; return nil }

// pgbenchSelect is the server's answer to one pgbench -S query (simple protocol).
func pgbenchSelect(tb testing.TB) []byte {
	var out []byte
	for _, m := range []pgproto3.Message{
		&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("abalance"), TableOID: 16390, TableAttributeNumber: 3, DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1}}},
		&pgproto3.DataRow{Values: [][]byte{[]byte("0")}},
		&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
		&pgproto3.ReadyForQuery{TxStatus: 'I'},
	} {
		var err error
		if out, err = m.Encode(out); err != nil {
			tb.Fatal(err)
		}
	}
	return out
}

func TestRelayAllocatesNothing(t *testing.T) {
	payload := pgbenchSelect(t)
	h := &passHandler{}
	p := newPump(nil, &syncWriter{conn: discardConn{}, out: discardConn{}}, h, DefaultMaxMessageSize, nil)
	allocs := testing.AllocsPerRun(1000, func() {
		p.w = copy(p.buf, payload)
		p.r = 0
		if err := p.process(); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("relaying a result allocates %.1f times, want 0", allocs)
	}
	if h.n == 0 {
		t.Fatal("ReadyForQuery was never seen")
	}
}

// BenchmarkRelayResult measures framing and relaying one pgbench -S result.
func BenchmarkRelayResult(b *testing.B) {
	payload := pgbenchSelect(b)
	p := newPump(nil, &syncWriter{conn: discardConn{}, out: discardConn{}}, &passHandler{}, DefaultMaxMessageSize, nil)
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	for b.Loop() {
		p.w = copy(p.buf, payload)
		p.r = 0
		if err := p.process(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRelayRoundTrip measures a whole query round trip through a
// session over in-memory pipes (client → proxy → fake server and back).
func BenchmarkRelayRoundTrip(b *testing.B) {
	f := newFakeUpstream()
	up, _ := ParseUpstream("postgres://fake:5432/db?sslmode=disable")
	up.Dial = f.dial
	srv, err := New(Config{Upstream: up})
	if err != nil {
		b.Fatal(err)
	}
	client, proxySide := net.Pipe()
	go srv.ServeConn(proxySide)
	defer client.Close()
	startup, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "u"}}).Encode(nil)
	go client.Write(startup)
	server := <-f.conns
	io.ReadFull(server, make([]byte, len(startup)))
	greet, _ := (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(nil)
	go server.Write(greet)
	io.ReadFull(client, make([]byte, len(greet)))
	query, _ := (&pgproto3.Query{String: "SELECT abalance FROM pgbench_accounts WHERE aid = 1;"}).Encode(nil)
	resp := pgbenchSelect(b)
	go func() {
		buf := make([]byte, len(query))
		for {
			if _, err := io.ReadFull(server, buf); err != nil {
				return
			}
			if _, err := server.Write(resp); err != nil {
				return
			}
		}
	}()
	rbuf := make([]byte, len(resp))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := client.Write(query); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(client, rbuf); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzClientBytes feeds arbitrary client bytes after a normal startup: the
// session must end cleanly when the client closes, without panicking or
// hanging, and leave nothing behind.
func FuzzClientBytes(f *testing.F) {
	q, _ := (&pgproto3.Query{String: "select 1"}).Encode(nil)
	f.Add(q)
	f.Add([]byte{'Q', 0, 0, 0, 2})
	f.Add([]byte{'X', 0, 0, 0, 4, 'Q'})
	f.Add([]byte{'p', 0, 0, 0, 9, 'a', 0, 0, 0})
	f.Add([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f})
	f.Fuzz(func(t *testing.T, data []byte) {
		fu := newFakeUpstream()
		up, _ := ParseUpstream("postgres://fake:5432/db?sslmode=disable")
		up.Dial = fu.dial
		srv, err := New(Config{Upstream: up, MaxMessageSize: 1 << 16, StartupTimeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		client, proxySide := net.Pipe()
		done := make(chan struct{})
		go func() { srv.ServeConn(proxySide); close(done) }()
		go io.Copy(io.Discard, client)
		startup, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "u"}}).Encode(nil)
		client.Write(startup)
		server := <-fu.conns
		go func() {
			buf := make([]byte, len(startup))
			io.ReadFull(server, buf)
			greet, _ := (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(nil)
			server.Write(greet)
			io.Copy(io.Discard, server)
		}()
		_ = client.SetWriteDeadline(time.Now().Add(2 * time.Second))
		client.Write(data)
		client.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("session did not end after the client closed")
		}
		server.Close()
		if n := srv.Sessions(); n != 0 {
			t.Fatalf("%d sessions left", n)
		}
	})
}

// panicHandler panics on the first message, like a bug would.
type panicHandler struct{}

func (panicHandler) class(typ byte) msgClass            { return classPeek }
func (panicHandler) header(typ byte, length int) error  { return nil }
func (panicHandler) message(typ byte, msg []byte) error { panic("bug") }

// TestPanicEndsOnlyTheSession: a panic in a pump becomes an XX000 error
// for that session instead of taking the process down.
func TestPanicEndsOnlyTheSession(t *testing.T) {
	srv := deadUpstreamServer(t)
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	s := newSession(srv, a, 1)
	p := newPump(a, &syncWriter{conn: discardConn{}, out: discardConn{}}, panicHandler{}, DefaultMaxMessageSize, nil)
	go func() {
		msg, _ := (&pgproto3.Query{String: "select 1"}).Encode(nil)
		_, _ = b.Write(msg)
	}()
	err := s.runSafely(p)
	var ce *clientError
	if !errors.As(err, &ce) || ce.code != codeInternalError || outcome(err) != "internal_error" {
		t.Fatalf("a panicking pump ended with %v", err)
	}
}

// replaceHandler replaces Bind messages whose portal is "swap".
type replaceHandler struct{ passHandler }

func (h *replaceHandler) class(typ byte) msgClass {
	if typ == 'B' {
		return classReplace
	}
	return classStream
}

func (h *replaceHandler) replace(typ byte, msg []byte) ([]byte, error) {
	if bytes.HasPrefix(msg[5:], []byte("swap\x00")) {
		return []byte("REPLACED"), nil
	}
	return msg, nil
}

func TestPumpReplace(t *testing.T) {
	enc := func(msgs ...pgproto3.FrontendMessage) []byte {
		var out []byte
		for _, m := range msgs {
			var err error
			if out, err = m.Encode(out); err != nil {
				t.Fatal(err)
			}
		}
		return out
	}
	keep := enc(&pgproto3.Bind{PreparedStatement: "s"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	out := &bufConn{}
	p := newPump(nil, &syncWriter{conn: out, out: out}, &replaceHandler{}, DefaultMaxMessageSize, nil)
	p.w = copy(p.buf, keep)
	if err := p.process(); err != nil {
		t.Fatal(err)
	}
	// An unchanged Bind goes out with its Execute and Sync in one write.
	if out.writes != 1 || !bytes.Equal(out.buf.Bytes(), keep) {
		t.Fatalf("%d writes of %q, want one of %q", out.writes, out.buf.Bytes(), keep)
	}
	out.buf.Reset()
	swapped := enc(&pgproto3.Execute{Portal: "a"}, &pgproto3.Bind{DestinationPortal: "swap"}, &pgproto3.Sync{})
	p.w, p.r = copy(p.buf, swapped), 0
	if err := p.process(); err != nil {
		t.Fatal(err)
	}
	want := append(append(enc(&pgproto3.Execute{Portal: "a"}), "REPLACED"...), enc(&pgproto3.Sync{})...)
	if !bytes.Equal(out.buf.Bytes(), want) {
		t.Fatalf("relayed %q, want %q", out.buf.Bytes(), want)
	}
}

// TestServerCloseAfterTerminate: the server closes its side once it reads
// the client's Terminate; if the server-to-client pump sees that first, the
// session still ends as terminated by the client, with nothing injected
// (node-postgres reports an error that arrives after its Terminate).
func TestServerCloseAfterTerminate(t *testing.T) {
	srv := deadUpstreamServer(t)
	for _, terminating := range []bool{true, false} {
		a, b := net.Pipe()
		s := newSession(srv, a, 1)
		s.terminating.Store(terminating)
		got := make(chan []byte, 1)
		go func() {
			buf, _ := io.ReadAll(b)
			got <- buf
		}()
		err := s.fromPumpDown(&readError{io.EOF})
		a.Close()
		injected := <-got
		b.Close()
		if terminating && (!errors.Is(err, errTerminated) || len(injected) != 0) {
			t.Errorf("after Terminate: ended with %v, client got %q", err, injected)
		}
		if !terminating && !errors.Is(err, errUpstreamGone) {
			t.Errorf("without Terminate: ended with %v", err)
		}
	}
}

// deadUpstreamServer is a Server whose upstream nobody listens on, for
// tests of sessions that never reach it.
func deadUpstreamServer(t *testing.T) *Server {
	t.Helper()
	up, err := ParseUpstream("postgres://127.0.0.1:1/db?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{Upstream: up})
	if err != nil {
		t.Fatal(err)
	}
	return srv
}
