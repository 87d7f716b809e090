package proxy

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Console serves the admin console commands that reach beyond the proxy
// itself. Its methods are called from session goroutines.
type Console interface {
	// Reload re-reads the policy and the TLS files (as SIGHUP does) and
	// returns a one-line summary, or why the reload failed (the old
	// settings then stay).
	Reload() (string, error)
	// Shutdown begins a graceful shutdown (as SIGTERM does).
	Shutdown()
	// Policy describes the loaded policy as rows of (kind, name, value).
	Policy() [][]string
	// Usage returns the usage ledger's current counts as a table, or an
	// error when no ledger is configured.
	Usage() (columns []string, rows [][]string, err error)
	// Stats returns extra (name, value) rows for SHOW STATS.
	Stats() [][]string
}

// errConsoleDone ends a console session normally.
var errConsoleDone = errors.New("console session ended")

// consoleHelp lists the console commands (SHOW HELP).
var consoleHelp = [][]string{
	{"SHOW SESSIONS", "open sessions: user, database, client, mode, state, bytes, queries"},
	{"SHOW STATS", "totals since start: sessions, queries, bytes, plan cache, reloads"},
	{"SHOW POLICY", "the loaded policy: file, version, classified columns, roles"},
	{"SHOW USAGE", "the usage ledger's counts (with --usage-store)"},
	{"RELOAD", "re-read the policy and TLS files, as SIGHUP does"},
	{"SHUTDOWN", "stop gracefully, as SIGTERM does"},
	{"SHOW HELP", "this list"},
}

// serveConsole runs an admin console session: the upstream authenticates
// the client (the proxy relays the exchange against AdminAuthDatabase and
// then closes that connection), and the proxy answers the commands itself.
func (s *session) serveConsole(startup []byte, log *slog.Logger) {
	cfg := &s.srv.cfg
	ctx, cancel := context.WithTimeout(context.Background(), cfg.ConnectTimeout)
	server, serverTLS, err := cfg.Upstream.dial(ctx, cfg.ConnectTimeout)
	cancel()
	cfg.Observer.UpstreamConnected(0, err)
	if err != nil {
		s.sendError(s.client, "FATAL", codeConnectionFailure, "pgveil: cannot connect to the upstream server to authenticate")
		log.Warn("upstream connect failed", "err", err)
		return
	}
	s.serverTLS = serverTLS
	_ = server.SetDeadline(time.Now().Add(cfg.StartupTimeout))
	cr := bufio.NewReader(countingReader{s.client, &s.bytesIn})
	err = s.consoleAuth(server, serverTLS, cr)
	_ = server.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = server.Write([]byte{'X', 0, 0, 0, 4})
	server.Close()
	if err != nil {
		var ce *clientError
		if errors.As(err, &ce) {
			s.sendError(s.client, "FATAL", ce.code, ce.msg)
		}
		log.Info("console authentication failed", "err", err)
		return
	}
	_ = s.client.SetDeadline(time.Time{})
	s.toCl.setConn(s.client)
	s.txStatus.Store('I')
	s.ready.Store(true)
	s.markDecided()
	log.Info("session start", "application_name", s.appName, "client_tls", s.clientTLS, "mode", "console")
	cfg.Observer.SessionStarted()
	err = s.consoleLoop(cr, log)
	if err == nil || errors.Is(err, io.EOF) {
		err = errConsoleDone
	}
	s.end(err)
	cause := s.endCause
	if errors.Is(cause, errConsoleDone) {
		cause = nil
	}
	elapsed := time.Since(s.start)
	cfg.Observer.SessionEnded(outcome(cause), elapsed)
	log.Info("session end", "elapsed", elapsed.Round(time.Millisecond), "outcome", outcome(cause), "mode", "console",
		"bytes_in", s.bytesIn.Load(), "bytes_out", s.bytesOut.Load(), "queries", s.queries.Load())
}

// consoleAuth relays the authentication exchange of a console login with
// the upstream, in lock step, and consumes the server's answer up to its
// first ReadyForQuery. The server's errors reach the client unchanged.
func (s *session) consoleAuth(server net.Conn, serverTLS bool, cr *bufio.Reader) error {
	// The upstream sees the client's user and application, and the
	// authentication database instead of the console's name.
	startup := startupPacket(map[string]string{"user": s.user, "database": s.srv.cfg.AdminAuthDatabase, "application_name": "pgveil-console"})
	if _, err := server.Write(startup); err != nil {
		return &clientError{code: codeConnectionFailure, msg: "pgveil: upstream server closed the connection"}
	}
	sr := bufio.NewReader(server)
	authed := false
	toClient := func(b []byte) error {
		_, err := s.client.Write(b)
		return err
	}
	relayClientReply := func(check bool) error {
		typ, msg, err := readMessage(cr, maxStartupPacket)
		if err != nil {
			return err
		}
		if typ != 'p' {
			return &clientError{code: codeProtocolViolation, msg: fmt.Sprintf("pgveil: expected an authentication response, got message type %q", typ)}
		}
		if check {
			if err := checkSASLInitial(msg, serverTLS); err != nil {
				return err
			}
		}
		_, err = server.Write(msg)
		return err
	}
	for {
		typ, msg, err := readMessage(sr, 1<<20)
		if err != nil {
			return fmt.Errorf("reading from upstream: %w", err)
		}
		switch typ {
		case 'R':
			if len(msg) < 9 {
				return &clientError{code: codeProtocolViolation, msg: "pgveil: malformed authentication request from server"}
			}
			switch code := binary.BigEndian.Uint32(msg[5:9]); code {
			case 0: // AuthenticationOk
				authed = true
				err = toClient(msg)
			case 3, 5: // cleartext password, MD5 password
				if err = toClient(msg); err == nil {
					err = relayClientReply(false)
				}
			case 10: // AuthenticationSASL
				var out []byte
				if out, err = filterSASL(msg); err == nil {
					if err = toClient(out); err == nil {
						err = relayClientReply(true)
					}
				}
			case 11: // AuthenticationSASLContinue
				if err = toClient(msg); err == nil {
					err = relayClientReply(false)
				}
			case 12: // AuthenticationSASLFinal
				err = toClient(msg)
			default:
				return &clientError{code: codeFeatureNotSupported, msg: fmt.Sprintf("pgveil: authentication method %d is not supported for the admin console", code)}
			}
		case 'E':
			_ = toClient(msg)
			return errors.New("upstream refused the login")
		case 'S', 'N':
			if authed {
				err = toClient(msg)
			}
		case 'K':
			// The console has no backend to cancel; it sends a key of its
			// own that matches nothing.
			key := make([]byte, 8)
			_, _ = rand.Read(key)
			out, _ := (&pgproto3.BackendKeyData{ProcessID: binary.BigEndian.Uint32(key[:4]), SecretKey: key[4:]}).Encode(nil)
			err = toClient(out)
		case 'Z':
			if !authed {
				return &clientError{code: codeProtocolViolation, msg: "pgveil: server ready before authentication"}
			}
			return nil
		default:
			return &clientError{code: codeProtocolViolation, msg: fmt.Sprintf("pgveil: unexpected message %q from server during authentication", typ)}
		}
		if err != nil {
			return err
		}
	}
}

// startupPacket encodes a protocol 3.0 StartupMessage.
func startupPacket(params map[string]string) []byte {
	b := make([]byte, 8, 64)
	binary.BigEndian.PutUint32(b[4:8], protocolVersion3)
	for _, k := range []string{"user", "database", "application_name"} {
		if v := params[k]; v != "" {
			b = append(b, k...)
			b = append(b, 0)
			b = append(b, v...)
			b = append(b, 0)
		}
	}
	b = append(b, 0)
	binary.BigEndian.PutUint32(b[0:4], uint32(len(b)))
	return b
}

// readMessage reads one whole message (type byte, length, body).
func readMessage(r *bufio.Reader, max int) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr[1:5]))
	if n < 4 || n > max {
		return 0, nil, &protocolError{fmt.Sprintf("invalid message length %d for message type %q", n, hdr[0])}
	}
	msg := make([]byte, 1+n)
	copy(msg, hdr[:])
	if _, err := io.ReadFull(r, msg[5:]); err != nil {
		return 0, nil, err
	}
	return hdr[0], msg, nil
}

// consoleLoop answers console messages until the client leaves.
func (s *session) consoleLoop(r *bufio.Reader, log *slog.Logger) error {
	if err := s.consoleWrite(readyForQuery('I')); err != nil {
		return err
	}
	skipping := false // an extended-protocol message was refused; skip to Sync
	for {
		typ, msg, err := readMessage(r, 1<<20)
		if err != nil {
			var pe *protocolError
			if errors.As(err, &pe) {
				return pe
			}
			return err
		}
		switch typ {
		case 'Q':
			q, _, ok := cutNul(msg[5:])
			if !ok {
				return &protocolError{"malformed Query message"}
			}
			s.pending.Store(1)
			out := s.consoleQuery(q, log)
			out = append(out, readyForQuery('I')...)
			s.pending.Store(0)
			s.queries.Add(1)
			if err := s.consoleWrite(out); err != nil {
				return err
			}
		case 'X':
			return nil
		case 'S':
			skipping = false
			if err := s.consoleWrite(readyForQuery('I')); err != nil {
				return err
			}
		case 'H':
		case 'P', 'B', 'D', 'E', 'C', 'F':
			if !skipping {
				skipping = true
				if err := s.consoleWrite(errorMessage("ERROR", codeFeatureNotSupported, "pgveil admin console: only the simple query protocol is supported")); err != nil {
					return err
				}
			}
		default:
			return &protocolError{fmt.Sprintf("unexpected message type %q", typ)}
		}
	}
}

func (s *session) consoleWrite(b []byte) error {
	s.bytesOut.Add(int64(len(b)))
	return s.toCl.write(b, false)
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r     io.Reader
	count interface{ Add(int64) int64 }
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.count.Add(int64(n))
	return n, err
}

func readyForQuery(status byte) []byte { return []byte{'Z', 0, 0, 0, 5, status} }

// consoleQuery runs the commands of one Query message and returns the
// answer, up to (not including) ReadyForQuery. Commands are separated by
// semicolons; the first failing one ends the message, as in PostgreSQL.
func (s *session) consoleQuery(q string, log *slog.Logger) []byte {
	var out []byte
	ran := false
	for _, cmd := range strings.Split(q, ";") {
		words := strings.Fields(strings.ToUpper(cmd))
		if len(words) == 0 {
			continue
		}
		ran = true
		text := strings.Join(words, " ")
		log.Info("console command", "command", text)
		var err error
		out, err = s.consoleCommand(out, text)
		if err != nil {
			code := codeSyntaxError
			var ce *clientError
			if errors.As(err, &ce) {
				code = ce.code
			}
			msg := err.Error()
			if ce != nil {
				msg = ce.msg
			}
			return append(out, errorMessage("ERROR", code, msg)...)
		}
	}
	if !ran {
		out = append(out, 'I', 0, 0, 0, 4) // EmptyQueryResponse
	}
	return out
}

// consoleCommand appends the answer to one command.
func (s *session) consoleCommand(out []byte, cmd string) ([]byte, error) {
	c := s.srv.cfg.Console
	switch cmd {
	case "SHOW HELP":
		return appendTable(out, []string{"command", "description"}, consoleHelp, "SHOW"), nil
	case "SHOW SESSIONS":
		var rows [][]string
		for _, in := range s.srv.SessionList() {
			rows = append(rows, []string{
				strconv.FormatUint(in.ID, 10), in.User, in.Database, in.AppName, in.Client,
				strconv.FormatBool(in.ClientTLS), strconv.FormatBool(in.ServerTLS), in.Mode, in.State,
				in.Started.UTC().Format(time.RFC3339), time.Since(in.Started).Round(time.Second).String(),
				strconv.FormatInt(in.BytesIn, 10), strconv.FormatInt(in.BytesOut, 10), strconv.FormatInt(in.Queries, 10),
			})
		}
		cols := []string{"id", "user", "database", "application_name", "client_addr", "client_tls", "server_tls",
			"mode", "state", "started", "duration", "bytes_in", "bytes_out", "queries"}
		return appendTable(out, cols, rows, "SHOW"), nil
	case "SHOW STATS":
		st := s.srv.Stats()
		rows := [][]string{
			{"sessions_open", strconv.Itoa(st.Sessions)},
			{"queries", strconv.FormatInt(st.Queries, 10)},
			{"client_bytes", strconv.FormatInt(st.ClientBytes, 10)},
			{"server_bytes", strconv.FormatInt(st.ServerBytes, 10)},
			{"plan_cache_hits", strconv.FormatUint(st.PlanCacheHits, 10)},
			{"plan_cache_misses", strconv.FormatUint(st.PlanCacheMisses, 10)},
			{"plan_template_hits", strconv.FormatUint(st.PlanTemplateHits, 10)},
		}
		if c != nil {
			rows = append(rows, c.Stats()...)
		}
		return appendTable(out, []string{"name", "value"}, rows, "SHOW"), nil
	case "SHOW POLICY":
		if c == nil {
			return out, &clientError{code: codeObjectNotInState, msg: "pgveil admin console: no policy is configured (--policy)"}
		}
		return appendTable(out, []string{"kind", "name", "value"}, c.Policy(), "SHOW"), nil
	case "SHOW USAGE":
		if c == nil {
			return out, &clientError{code: codeObjectNotInState, msg: "pgveil admin console: no usage ledger is configured (--usage-store)"}
		}
		cols, rows, err := c.Usage()
		if err != nil {
			return out, &clientError{code: codeObjectNotInState, msg: "pgveil admin console: " + err.Error()}
		}
		return appendTable(out, cols, rows, "SHOW"), nil
	case "RELOAD":
		if c == nil {
			return out, &clientError{code: codeObjectNotInState, msg: "pgveil admin console: nothing to reload"}
		}
		summary, err := c.Reload()
		if err != nil {
			return out, &clientError{code: codeConfigFileError, msg: "pgveil: reload failed, the previous settings stay: " + err.Error()}
		}
		notice, _ := (&pgproto3.NoticeResponse{Severity: "NOTICE", SeverityUnlocalized: "NOTICE", Code: "00000", Message: summary}).Encode(nil)
		out = append(out, notice...)
		return appendCommandComplete(out, "RELOAD"), nil
	case "SHUTDOWN":
		if c == nil {
			return out, &clientError{code: codeObjectNotInState, msg: "pgveil admin console: shutdown is not available"}
		}
		// The answer goes out first; the drain then ends this session
		// like every other idle one.
		go func() {
			time.Sleep(50 * time.Millisecond)
			c.Shutdown()
		}()
		return appendCommandComplete(out, "SHUTDOWN"), nil
	}
	return out, &clientError{code: codeSyntaxError, msg: fmt.Sprintf("pgveil admin console: unknown command %q; try SHOW HELP", cmd)}
}

// codeObjectNotInState is SQLSTATE 55000.
const codeObjectNotInState = "55000"

// appendTable appends a text-typed result set and its CommandComplete.
func appendTable(out []byte, cols []string, rows [][]string, tag string) []byte {
	rd := pgproto3.RowDescription{Fields: make([]pgproto3.FieldDescription, len(cols))}
	for i, c := range cols {
		rd.Fields[i] = pgproto3.FieldDescription{Name: []byte(c), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1}
	}
	out, _ = rd.Encode(out)
	for _, row := range rows {
		dr := pgproto3.DataRow{Values: make([][]byte, len(cols))}
		for i := range cols {
			if i < len(row) {
				dr.Values[i] = []byte(row[i])
			}
		}
		out, _ = dr.Encode(out)
	}
	if tag == "SHOW" {
		return appendCommandComplete(out, "SHOW")
	}
	return appendCommandComplete(out, tag+" "+strconv.Itoa(len(rows)))
}

func appendCommandComplete(out []byte, tag string) []byte {
	out, _ = (&pgproto3.CommandComplete{CommandTag: []byte(tag)}).Encode(out)
	return out
}
