package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgveil/pgveil/internal/testcert"
)

// fakeUpstream hands each dial of the proxy to the test as the server end
// of a net.Pipe.
type fakeUpstream struct {
	conns chan net.Conn
}

func newFakeUpstream() *fakeUpstream { return &fakeUpstream{conns: make(chan net.Conn, 8)} }

func (f *fakeUpstream) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	a, b := net.Pipe()
	f.conns <- b
	return a, nil
}

func (f *fakeUpstream) next(t *testing.T) net.Conn {
	t.Helper()
	select {
	case c := <-f.conns:
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("proxy did not dial the upstream")
		return nil
	}
}

// testServer returns a Server whose upstream is f (sslmode=disable).
func testServer(t *testing.T, f *fakeUpstream, mod func(*Config)) *Server {
	t.Helper()
	up, err := ParseUpstream("postgres://fake:5432/db?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	up.Dial = f.dial
	cfg := Config{Upstream: up, ConnectTimeout: 5 * time.Second, StartupTimeout: 5 * time.Second}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

// connect starts a session on a pipe and returns the client end.
func connect(t *testing.T, srv *Server) (net.Conn, chan struct{}) {
	t.Helper()
	c, p := net.Pipe()
	done := serveSession(t, srv, c, p)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, done
}

// serveSession serves the proxy end p of a client connection c; when the
// test ends it closes c and checks that the session ended. The channel is
// closed when it has.
func serveSession(t *testing.T, srv *Server, c, p net.Conn) chan struct{} {
	t.Helper()
	done := make(chan struct{})
	go func() { srv.ServeConn(p); close(done) }()
	t.Cleanup(func() {
		c.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("session did not end after the client closed")
		}
	})
	return done
}

func startupBytes(t *testing.T, params map[string]string) []byte {
	t.Helper()
	b, err := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: params}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func encode(t *testing.T, msgs ...pgproto3.Message) []byte {
	t.Helper()
	var out []byte
	for _, m := range msgs {
		var err error
		if out, err = m.Encode(out); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func readN(t *testing.T, r io.Reader, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

// readMsg reads one whole protocol message.
func readMsg(t *testing.T, r io.Reader) []byte {
	t.Helper()
	hdr := readN(t, r, 5)
	body := readN(t, r, int(binary.BigEndian.Uint32(hdr[1:]))-4)
	return append(hdr, body...)
}

func write(t *testing.T, w io.Writer, b []byte) {
	t.Helper()
	if _, err := w.Write(b); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// writeAsync writes b without blocking the test (net.Pipe writes wait for
// the reader).
func writeAsync(w io.Writer, b []byte) chan error {
	ch := make(chan error, 1)
	go func() { _, err := w.Write(b); ch <- err }()
	return ch
}

// handshake runs a trust-auth startup through the proxy and returns the
// server end and the BackendKeyData the client saw.
func handshake(t *testing.T, client net.Conn, f *fakeUpstream) (net.Conn, *pgproto3.BackendKeyData) {
	t.Helper()
	startup := startupBytes(t, map[string]string{"user": "alice", "database": "app", "application_name": "test", "options": "-c search_path=x"})
	ch := writeAsync(client, startup)
	server := f.next(t)
	_ = server.SetDeadline(time.Now().Add(10 * time.Second))
	if got := readN(t, server, len(startup)); !bytes.Equal(got, startup) {
		t.Fatalf("server got startup %q, want %q", got, startup)
	}
	if err := <-ch; err != nil {
		t.Fatal(err)
	}
	greeting := encode(t,
		&pgproto3.AuthenticationOk{},
		&pgproto3.ParameterStatus{Name: "server_version", Value: "15.0"},
		&pgproto3.BackendKeyData{ProcessID: 4242, SecretKey: []byte{1, 2, 3, 4}},
		&pgproto3.ReadyForQuery{TxStatus: 'I'},
	)
	ch = writeAsync(server, greeting)
	got := readN(t, client, len(greeting))
	if err := <-ch; err != nil {
		t.Fatal(err)
	}
	// Everything but the secret is relayed unchanged.
	keyAt := bytes.Index(greeting, []byte{'K', 0, 0, 0, 12})
	if !bytes.Equal(got[:keyAt+9], greeting[:keyAt+9]) || !bytes.Equal(got[keyAt+13:], greeting[keyAt+13:]) {
		t.Fatalf("client got %q, want %q apart from the secret", got, greeting)
	}
	var key pgproto3.BackendKeyData
	if err := key.Decode(got[keyAt+5 : keyAt+13]); err != nil {
		t.Fatal(err)
	}
	if key.ProcessID != 4242 {
		t.Errorf("pid = %d, want the server's 4242", key.ProcessID)
	}
	if bytes.Equal(key.SecretKey, []byte{1, 2, 3, 4}) {
		t.Error("the server's cancel secret reached the client")
	}
	return server, &key
}

func TestRelayPlain(t *testing.T) {
	f := newFakeUpstream()
	srv := testServer(t, f, nil)
	client, _ := connect(t, srv)

	// SSLRequest and GSSENCRequest are answered 'N' without TLS configured.
	write(t, client, []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f})
	if b := readN(t, client, 1); b[0] != 'N' {
		t.Fatalf("SSLRequest answer %q, want N", b)
	}
	write(t, client, []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30})
	if b := readN(t, client, 1); b[0] != 'N' {
		t.Fatalf("GSSENCRequest answer %q, want N", b)
	}
	server, _ := handshake(t, client, f)
	relayRoundTrip(t, client, server)
}

// relayRoundTrip checks byte-exact relaying of a pipelined extended-protocol
// exchange, fed one byte at a time, and a result larger than the buffers.
func relayRoundTrip(t *testing.T, client, server net.Conn) {
	t.Helper()
	req := encode(t,
		&pgproto3.Parse{Name: "s1", Query: "select $1::text"},
		&pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("hello")}},
		&pgproto3.Describe{ObjectType: 'P'},
		&pgproto3.Execute{},
		&pgproto3.Sync{},
		&pgproto3.Query{String: "select 1"},
	)
	ch := make(chan error, 1)
	go func() {
		for i := range req {
			if _, err := client.Write(req[i : i+1]); err != nil {
				ch <- err
				return
			}
		}
		ch <- nil
	}()
	if got := readN(t, server, len(req)); !bytes.Equal(got, req) {
		t.Fatalf("server got %q, want %q", got, req)
	}
	if err := <-ch; err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("x"), 3*pumpBufferSize+17)
	resp := encode(t,
		&pgproto3.ParseComplete{}, &pgproto3.BindComplete{},
		&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("text"), DataTypeOID: 25, TypeModifier: -1, DataTypeSize: -1}}},
		&pgproto3.DataRow{Values: [][]byte{big}},
		&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
		&pgproto3.NoticeResponse{Severity: "NOTICE", Code: "00000", Message: "hi"},
		&pgproto3.ReadyForQuery{TxStatus: 'I'},
		&pgproto3.NotificationResponse{PID: 7, Channel: "c", Payload: "p"},
		&pgproto3.ReadyForQuery{TxStatus: 'T'},
	)
	ch = writeAsync(server, resp)
	if got := readN(t, client, len(resp)); !bytes.Equal(got, resp) {
		t.Fatalf("client got %d bytes different from the %d sent", len(got), len(resp))
	}
	if err := <-ch; err != nil {
		t.Fatal(err)
	}
}

func TestRelayTLS(t *testing.T) {
	ca, err := testcert.NewCA("pgveil test CA")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue("proxy", "localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeUpstream()
	srv := testServer(t, f, func(c *Config) {
		c.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		c.TLSRequired = true
	})

	t.Run("plaintext refused", func(t *testing.T) {
		client, _ := connect(t, srv)
		write(t, client, startupBytes(t, map[string]string{"user": "alice"}))
		msg := readMsg(t, client)
		var e pgproto3.ErrorResponse
		if err := e.Decode(msg[5:]); err != nil || msg[0] != 'E' {
			t.Fatalf("got %q (%v), want an ErrorResponse", msg, err)
		}
		if e.Code != codeInvalidAuthSpec || !strings.Contains(e.Message, "TLS is required") {
			t.Fatalf("got %s %q", e.Code, e.Message)
		}
	})

	t.Run("tls", func(t *testing.T) {
		raw, _ := connect(t, srv)
		write(t, raw, []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f})
		if b := readN(t, raw, 1); b[0] != 'S' {
			t.Fatalf("SSLRequest answer %q, want S", b)
		}
		client := tls.Client(raw, &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost", MaxVersion: tls.VersionTLS12})
		if err := client.Handshake(); err != nil {
			t.Fatal(err)
		}
		server, _ := handshake(t, client, f)
		relayRoundTrip(t, client, server)
	})

	t.Run("tls 1.1 refused", func(t *testing.T) {
		raw, _ := connect(t, srv)
		write(t, raw, []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f})
		readN(t, raw, 1)
		client := tls.Client(raw, &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost", MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11})
		if err := client.Handshake(); err == nil {
			t.Fatal("TLS 1.1 handshake succeeded")
		}
	})
}

func TestSASLChannelBindingNotOffered(t *testing.T) {
	f := newFakeUpstream()
	srv := testServer(t, f, nil)
	client, _ := connect(t, srv)
	go client.Write(startupBytes(t, map[string]string{"user": "alice"}))
	server := f.next(t)
	_ = server.SetDeadline(time.Now().Add(10 * time.Second))
	readMsgStartup(t, server)
	offer := encode(t, &pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"}})
	go server.Write(offer)
	msg := readMsg(t, client)
	var got pgproto3.AuthenticationSASL
	if err := got.Decode(msg[5:]); err != nil {
		t.Fatal(err)
	}
	if len(got.AuthMechanisms) != 1 || got.AuthMechanisms[0] != "SCRAM-SHA-256" {
		t.Fatalf("client offered %q, want only SCRAM-SHA-256", got.AuthMechanisms)
	}
	// A client that insists on channel binding gets a clear error.
	initial := encode(t, &pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256-PLUS", Data: []byte("p=tls-server-end-point,,n=,r=abc")})
	go client.Write(initial)
	msg = readMsg(t, client)
	var e pgproto3.ErrorResponse
	if err := e.Decode(msg[5:]); err != nil || msg[0] != 'E' {
		t.Fatalf("got %q, want ErrorResponse", msg)
	}
	if e.Code != codeInvalidAuthSpec || !strings.Contains(e.Message, "channel binding") {
		t.Fatalf("got %s %q", e.Code, e.Message)
	}
}

func readMsgStartup(t *testing.T, r io.Reader) []byte {
	t.Helper()
	hdr := readN(t, r, 4)
	return append(hdr, readN(t, r, int(binary.BigEndian.Uint32(hdr))-4)...)
}

func TestMalformedMessage(t *testing.T) {
	for _, tc := range []struct {
		name string
		msg  []byte
		want string
	}{
		{"short length", []byte{'Q', 0, 0, 0, 2}, "invalid message length"},
		{"oversized", []byte{'Q', 0, 0x10, 0, 0}, "more than the limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeUpstream()
			srv := testServer(t, f, func(c *Config) { c.MaxMessageSize = 1 << 16 })
			client, done := connect(t, srv)
			server, _ := handshake(t, client, f)
			go client.Write(tc.msg)
			msg := readMsg(t, client)
			var e pgproto3.ErrorResponse
			if err := e.Decode(msg[5:]); err != nil || msg[0] != 'E' {
				t.Fatalf("got %q, want ErrorResponse", msg)
			}
			if e.Code != codeProtocolViolation || !strings.Contains(e.Message, tc.want) || e.Severity != "FATAL" {
				t.Fatalf("got %s %s %q", e.Severity, e.Code, e.Message)
			}
			// The server is told to terminate, then the session ends.
			if got := readN(t, server, 5); !bytes.Equal(got, []byte{'X', 0, 0, 0, 4}) {
				t.Fatalf("server got %q, want Terminate", got)
			}
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("session still running")
			}
		})
	}
}

func TestUpstreamLost(t *testing.T) {
	f := newFakeUpstream()
	srv := testServer(t, f, nil)
	client, _ := connect(t, srv)
	server, _ := handshake(t, client, f)
	server.Close()
	msg := readMsg(t, client)
	var e pgproto3.ErrorResponse
	if err := e.Decode(msg[5:]); err != nil || msg[0] != 'E' {
		t.Fatalf("got %q, want ErrorResponse", msg)
	}
	if e.Code != codeConnectionFailure {
		t.Fatalf("got %s %q, want 08006", e.Code, e.Message)
	}
	if _, err := client.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("client connection not closed: %v", err)
	}
}

func TestUpstreamUnreachable(t *testing.T) {
	up, _ := ParseUpstream("postgres://127.0.0.1:1/db?sslmode=disable")
	srv, err := New(Config{Upstream: up})
	if err != nil {
		t.Fatal(err)
	}
	client, _ := connect(t, srv)
	go client.Write(startupBytes(t, map[string]string{"user": "alice"}))
	msg := readMsg(t, client)
	var e pgproto3.ErrorResponse
	if err := e.Decode(msg[5:]); err != nil || msg[0] != 'E' || e.Code != codeConnectionFailure {
		t.Fatalf("got %q (%v), want 08006", msg, err)
	}
}

func TestCancelGoesToTheRightBackend(t *testing.T) {
	f := newFakeUpstream()
	srv := testServer(t, f, nil)
	c1, _ := connect(t, srv)
	s1, k1 := handshake(t, c1, f)
	_ = s1
	c2, _ := connect(t, srv)
	_, k2 := handshake(t, c2, f)

	sendCancel := func(pid uint32, secret []byte) {
		t.Helper()
		c, _ := connect(t, srv)
		b, _ := (&pgproto3.CancelRequest{ProcessID: pid, SecretKey: secret}).Encode(nil)
		write(t, c, b)
	}
	// A guessed key does nothing; the server's own secret is not accepted.
	sendCancel(k2.ProcessID, []byte{1, 2, 3, 4})
	// The proxy's key for session 1 reaches the upstream with the server's key.
	sendCancel(k1.ProcessID, k1.SecretKey)
	cancelConn := f.next(t)
	_ = cancelConn.SetDeadline(time.Now().Add(5 * time.Second))
	got := readMsgStartup(t, cancelConn)
	want, _ := (&pgproto3.CancelRequest{ProcessID: 4242, SecretKey: []byte{1, 2, 3, 4}}).Encode(nil)
	if !bytes.Equal(got, want) {
		t.Fatalf("upstream got cancel %q, want %q", got, want)
	}
	cancelConn.Close()
	select {
	case c := <-f.conns:
		t.Fatalf("unexpected extra upstream connection %v", c)
	case <-time.After(100 * time.Millisecond):
	}
}

func TestShutdownEndsIdleSessions(t *testing.T) {
	f := newFakeUpstream()
	srv := testServer(t, f, nil)
	client, done := connect(t, srv)
	server, _ := handshake(t, client, f)
	go io.Copy(io.Discard, server)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- srv.Shutdown(ctx) }()
	msg := readMsg(t, client)
	var e pgproto3.ErrorResponse
	if err := e.Decode(msg[5:]); err != nil || e.Code != codeAdminShutdown {
		t.Fatalf("got %q, want 57P01", msg)
	}
	<-done
	if err := <-errc; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

func TestShutdownWaitsForBusySessions(t *testing.T) {
	f := newFakeUpstream()
	srv := testServer(t, f, nil)
	client, done := connect(t, srv)
	server, _ := handshake(t, client, f)
	q := encode(t, &pgproto3.Query{String: "select pg_sleep(1)"})
	go client.Write(q)
	readN(t, server, len(q))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- srv.Shutdown(ctx) }()
	time.Sleep(50 * time.Millisecond)
	select {
	case <-done:
		t.Fatal("a busy session was ended before its query finished")
	default:
	}
	// The query finishes; its result reaches the client, then 57P01.
	resp := encode(t, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	go server.Write(resp)
	if got := readN(t, client, len(resp)); !bytes.Equal(got, resp) {
		t.Fatalf("client got %q", got)
	}
	msg := readMsg(t, client)
	var e pgproto3.ErrorResponse
	if err := e.Decode(msg[5:]); err != nil || e.Code != codeAdminShutdown {
		t.Fatalf("got %q, want 57P01", msg)
	}
	if got := readN(t, server, 5); got[0] != 'X' {
		t.Fatalf("server got %q, want Terminate", got)
	}
	<-done
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}
