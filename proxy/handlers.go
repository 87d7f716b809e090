package proxy

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgveil/pgveil/catalog"
	"github.com/pgveil/pgveil/rewrite"
)

// clientSide handles messages from the client to the server.
type clientSide struct {
	s       *session
	decided bool
	masked  *maskedSession
	// inBatch is set between an extended-protocol message and its Sync:
	// the proxy may send statements of its own only between sync points.
	inBatch bool
	// syncHeld says the Sync being handled was intercepted during a COPY
	// FROM STDIN (copysync.go), not peeked.
	syncHeld bool
}

func (h *clientSide) class(typ byte) msgClass {
	if typ == 'p' {
		if h.s.saslStarted.Load() {
			return classIntercept
		}
		return classStream
	}
	if !h.decided {
		// Authentication is over; nothing else may pass before the
		// server side has decided whether this session is masked.
		<-h.s.modeDecided
		h.decided = true
		h.masked = h.s.masked.Load()
	}
	if h.masked != nil {
		if h.masked.copyPhase.Load() != copyNone {
			switch typ {
			case 'S', 'B', 'D', 'C', 'E':
				// It may have to wait, or be dropped or refused
				// (copyGate), after what was read before it is sent.
				h.syncHeld = typ == 'S'
				return classIntercept
			}
		}
		switch typ {
		case 'B':
			if !h.inBatch && h.masked.dirty {
				// The first Bind after a sync point, when an earlier
				// statement may have changed search_path or the role:
				// the proxy reads them again first (maskedSession.bind).
				return classIntercept
			}
			return classReplace
		case 'D', 'C', 'E':
			return classReplace
		case 'Q', 'P', 'F':
			return classIntercept
		case 'd', 'c', 'f':
			if h.s.copyIn.Load() != nil {
				return classIntercept
			}
		}
	}
	if h.s.track != nil {
		switch typ {
		case 'Q', 'P', 'B', 'E', 'S', 'F', 'C':
			return classPeek
		}
	}
	return classStream
}

func (h *clientSide) header(typ byte, length int) error {
	return h.note(typ)
}

// note keeps the bookkeeping every client message needs, streamed or not.
func (h *clientSide) note(typ byte) error {
	// Query and FunctionCall are sync points of their own; COPY data
	// messages belong to neither kind of batch.
	switch typ {
	case 'S', 'Q', 'F':
		h.inBatch = false
	case 'P', 'B', 'D', 'E', 'C':
		h.inBatch = true
	case 'H':
		// The server ignores a Flush during COPY FROM STDIN.
		if h.masked == nil || h.masked.copyPhase.Load() == copyNone {
			h.inBatch = true
		}
	case 'c', 'f':
		if h.masked != nil {
			h.masked.copyEnd()
		} else {
			h.s.plainCopyEnded()
		}
	}
	if h.masked == nil {
		// A relayed session's COPY FROM STDIN (copyrelay.go).
		switch typ {
		case 'S':
			h.s.plainSync()
			return nil
		case 'Q':
			h.s.syncSent()
			h.s.pcopy.mark.Store(h.s.syncsSent.Load())
			return nil
		case 'E':
			h.s.pcopy.mark.Store(h.s.syncsSent.Load())
		}
	}
	switch typ {
	case 'Q', 'S', 'F':
		h.s.syncSent()
	case 'X':
		// The server closes its side once it reads the Terminate: that
		// end of the server's stream is the client's doing, not a lost
		// upstream (fromPumpDown), whichever pump ends first.
		h.s.terminating.Store(true)
		return errStopAfter
	}
	return nil
}

// message rewrites the statements of masked sessions, checks the
// SASLInitialResponse, and shows the statement tracker what is sent.
func (h *clientSide) message(typ byte, msg []byte) error {
	if typ == 'p' {
		return h.saslInitial(msg)
	}
	if h.masked == nil {
		// A peeked message of a tracked session: it passes unchanged.
		t := h.s.track
		switch typ {
		case 'Q':
			// The text is only looked up in the facts cache (which
			// copies what it keeps): a view of the buffer, not a copy.
			sql, _, _ := cutZero(msg[5:])
			t.query(transient(sql), nil, nil)
		case 'P':
			name, rest, _ := cutZero(msg[5:])
			sql, _, _ := cutZero(rest)
			t.parse(string(name), transient(sql), nil, nil)
		case 'B':
			t.bind(msg)
		case 'E':
			t.execute(msg)
		case 'F':
			t.syncPoint(true)
		case 'C':
			t.close(msg)
		}
		// A Sync's sync point is the tracker's too (note, plainSync).
		return h.note(typ)
	}
	var out []byte
	var err error
	t := h.s.track
	var drop bool
	switch typ {
	case 'd', 'c', 'f':
	default:
		if drop, err = h.masked.copyGate(typ); err != nil {
			return err
		}
	}
	switch typ {
	case 'Q':
		out, err = h.masked.query(msg, h.inBatch)
		if t != nil && err == nil {
			t.query(h.masked.lastSQL, h.masked.lastPlan, h.masked.lastErr)
		}
		// Clients may send COPY data before the server's CopyInResponse
		// (pgx does), so what the data is for is settled here.
		h.s.copyIn.Store(copyInOf(h.masked.lastPlan, h.masked.lastErr))
		if err == nil && h.masked.lastErr == nil && copiesIn(h.masked.lastPlan) {
			h.masked.copyStart()
		}
		h.note(typ)
	case 'P':
		atBoundary := !h.inBatch
		out, err = h.masked.parse(msg, atBoundary)
		if t != nil && err == nil {
			t.parse(h.masked.lastName, h.masked.lastSQL, h.masked.lastPlan, h.masked.lastErr)
		}
		h.note(typ)
	case 'F':
		// A function call by OID could run any function, including
		// those denied by name.
		if t != nil {
			t.syncPoint(true)
		}
		h.note(typ)
		out, err = (&pgproto3.Query{String: h.masked.refuse(&rewriteRefusalFunctionCall)}).Encode(nil)
	case 'B':
		if h.inBatch || !h.masked.dirty {
			// Intercepted during a COPY FROM STDIN (class), not for a
			// re-read.
			out, err = h.replace(typ, msg)
			break
		}
		if err := h.masked.refreshPath(); err != nil {
			return err
		}
		out, err = h.masked.bind(msg, true)
		if t != nil && err == nil {
			t.bind(msg)
		}
		h.note(typ)
	case 'D', 'C', 'E':
		// Intercepted during a COPY FROM STDIN (class).
		out, err = h.replace(typ, msg)
	case 'd', 'c', 'f':
		if typ != 'd' {
			h.masked.copyEnd()
		}
		return h.copyIn(typ, msg)
	case 'S':
		held := h.syncHeld
		h.syncHeld = false
		if drop {
			// The server would ignore it (copysync.go).
			return nil
		}
		if t != nil {
			t.syncPoint(false)
		}
		if err := h.note(typ); err != nil || !held {
			return err // peeked for the tracker: it passes unchanged
		}
		out = msg
	default:
		return fmt.Errorf("unexpected intercepted message %q", typ)
	}
	if err != nil {
		return err
	}
	if err := h.s.toSrv.write(out, false); err != nil {
		return &writeError{err}
	}
	return nil
}

// replace handles a masked session's Bind, Describe and Close. A Bind
// usually passes unchanged, in the same write as the Execute and Sync that
// follow it, and is replaced when its statement must be prepared again or
// its parameters encrypted. Each is refused when it names one of the
// proxy's own prepared statements (reservedName).
func (h *clientSide) replace(typ byte, msg []byte) ([]byte, error) {
	if h.masked == nil {
		return nil, fmt.Errorf("unexpected replaced message %q", typ)
	}
	if _, err := h.masked.copyGate(typ); err != nil {
		return nil, err
	}
	var (
		out []byte
		err error
	)
	t := h.s.track
	switch typ {
	case 'B':
		out, err = h.masked.bind(msg, !h.inBatch)
		if t != nil && err == nil {
			t.bind(msg)
		}
	case 'D', 'C':
		out, err = h.masked.describeOrClose(typ, msg)
		if t != nil && typ == 'C' && err == nil {
			t.close(msg)
		}
	case 'E':
		out, err = h.masked.execute(msg)
		if t != nil && err == nil {
			ts := t.execute(msg)
			var st *rewrite.Statement
			if ts != nil {
				st = ts.st
			}
			h.s.copyIn.Store(newCopyIn(st))
		}
	default:
		return nil, fmt.Errorf("unexpected replaced message %q", typ)
	}
	h.note(typ)
	return out, err
}

// saslInitial checks the SASLInitialResponse: channel binding cannot cross
// the proxy, so a client that insists on it is told why here rather than
// by a confusing server error.
func (h *clientSide) saslInitial(msg []byte) error {
	s := h.s
	s.saslStarted.Store(false)
	if err := checkSASLInitial(msg, s.serverTLS); err != nil {
		return err
	}
	if err := s.toSrv.write(msg, false); err != nil {
		return &writeError{err}
	}
	return nil
}

// checkSASLInitial refuses a SASLInitialResponse that asks for channel
// binding, or offers it where the server would take the offer as a
// downgrade (a TLS upstream).
func checkSASLInitial(msg []byte, serverTLS bool) error {
	mech, rest, ok := cutNul(msg[5:])
	if ok && strings.HasPrefix(mech, "SCRAM-") && len(rest) > 4 {
		data := rest[4:]
		switch {
		case len(data) > 0 && data[0] == 'p':
			return &clientError{code: codeInvalidAuthSpec, msg: "pgveil: SCRAM channel binding cannot pass through a proxy; connect with channel_binding=disable"}
		case len(data) > 0 && data[0] == 'y' && serverTLS:
			return &clientError{code: codeInvalidAuthSpec, msg: "pgveil: the client offers SCRAM channel binding, which cannot pass through a proxy that uses TLS on both sides; connect with channel_binding=disable (libpq) or use a non-TLS upstream"}
		}
	}
	return nil
}

// serverSide handles messages from the server to the client.
type serverSide struct {
	s     *session
	ready bool
	// masked is the session's masking state once decided.
	masked *maskedSession
	// internal is set while the proxy's own startup query runs; held is
	// the ReadyForQuery that will end it.
	internal bool
	held     []byte
	// refreshPath and refreshUser collect the answer to a refresh.
	refreshPath []string
	refreshUser string
	// failed records an ErrorResponse since the last ReadyForQuery;
	// refused that it was a refusal.
	failed, refused bool
	// swallowable says the ParseComplete, BindComplete or CloseComplete
	// being handled was intercepted (it may be one the proxy caused),
	// not peeked.
	swallowable bool
	// batch holds DataRows whose columns are decrypted together;
	// curOuts are the outputs of the result being answered (curValid
	// says whether they were looked up); withhold drops the rest of an
	// answer after a decryption failed.
	batch    rowBatch
	copyOut  *copyTransform
	curOuts  []rewrite.Output
	curValid bool
	withhold bool
}

func (h *serverSide) class(typ byte) msgClass {
	if h.internal || h.masked != nil && h.masked.refreshing.Load() {
		return classIntercept
	}
	if t := h.s.track; t != nil {
		if h.withhold {
			return classIntercept
		}
		if typ == 'D' && h.masked != nil {
			if !h.curValid {
				h.curOuts, h.curValid = t.headOutputs(), true
			}
			if h.curOuts != nil {
				return classIntercept
			}
		}
		if h.batch.n() > 0 {
			// Everything after held rows waits for them (errors and
			// notices of these sessions are intercepted below anyway).
			if typ != 'E' && typ != 'N' {
				h.swallowable = false
				return classPeek
			}
		}
		if h.masked != nil {
			switch typ {
			case 'H':
				return classPeek
			case 'd':
				if h.copyOut != nil {
					return classIntercept
				}
			case 'c':
				if h.copyOut != nil {
					return classPeek
				}
			}
		}
		switch typ {
		case 'C', 'I', 's', 'V':
			return classPeek
		case 'E':
			if h.masked == nil {
				return classPeek
			}
		}
	}
	switch typ {
	case 'Z':
		if !h.ready && h.s.srv.cfg.Masking != nil {
			return classIntercept
		}
		return classPeek
	case 'E', 'N':
		if h.masked != nil {
			return classIntercept
		}
		if typ == 'E' {
			return classPeek
		}
	case 'S':
		return classPeek
	case 'G':
		// It decides which Syncs the server ignores (copysync.go,
		// copyrelay.go).
		return classPeek
	case 'C':
		if h.s.srv.cfg.Masking != nil || h.s.pcopy.in.Load() {
			return classPeek
		}
	case 'R', 'K':
		if !h.ready {
			return classIntercept
		}
	case '1', '2', '3':
		if h.s.swallowing.Load() {
			h.swallowable = true
			return classIntercept
		}
		if h.masked != nil {
			// Counted for the books (maskedSession.settle).
			h.swallowable = false
			return classPeek
		}
	}
	return classStream
}

func (h *serverSide) header(typ byte, length int) error { return nil }

func (h *serverSide) message(typ byte, msg []byte) error {
	s := h.s
	if h.internal {
		return h.internalReply(typ, msg)
	}
	if h.masked != nil && h.masked.refreshing.Load() {
		return h.refreshReply(typ, msg)
	}
	if h.masked != nil {
		switch typ {
		case '1':
			h.masked.answer(answerParse)
		case '2':
			h.masked.answer(answerBind)
		case '3':
			h.masked.answer(answerClose)
		case 'C':
			h.masked.answer(answerDone)
		}
		switch typ {
		case 'G', 'C', 'E', 'Z':
			if err := h.masked.copyAnswer(typ); err != nil {
				return err
			}
		}
	} else {
		// A relayed session's COPY FROM STDIN (copyrelay.go).
		switch typ {
		case 'G':
			s.plainCopyStarted()
		case 'C', 'E':
			s.plainCopyEnded()
		}
	}
	if h.withhold {
		// A decryption failed: the rest of the answer is dropped up to
		// ReadyForQuery, which ends the withholding (and is relayed by
		// this handler, since withholding intercepts every message).
		if typ != 'Z' {
			return nil
		}
		h.withhold = false
		if err := h.write(msg); err != nil {
			return err
		}
	} else if typ == 'D' {
		if h.batch.n() == 0 {
			h.batch.outs = h.curOuts
		}
		h.batch.add(msg)
		if h.batch.n() >= s.srv.cfg.DecryptBatch {
			if err := h.flushBatch(); err != nil {
				return h.withholdResult(err)
			}
		}
		return nil
	} else if h.batch.n() > 0 {
		if err := h.flushBatch(); err != nil {
			if werr := h.withholdResult(err); werr != nil {
				return werr
			}
			// What ended the result belongs to the withheld answer.
			return h.message(typ, msg)
		}
	}
	switch typ {
	case 'C', 'I', 's', 'V', 'E', 'Z':
		h.curValid, h.curOuts = false, nil
		h.copyOut = nil
	case 'H':
		h.copyOut = newCopyOut(s.track.headStatement())
		return nil
	case 'd':
		if h.copyOut == nil {
			return nil
		}
		out, err := h.copyOut.add(s.srv, msg[5:], false)
		if err != nil {
			h.copyOut = nil
			return h.withholdResult(err)
		}
		if len(out) > 0 {
			return h.write(copyData(out))
		}
		return nil
	case 'c':
		if h.copyOut != nil {
			out, err := h.copyOut.add(s.srv, nil, true)
			h.copyOut = nil
			if err != nil {
				return h.withholdResult(err)
			}
			if len(out) > 0 {
				return h.write(copyData(out))
			}
		}
		return nil
	}
	switch typ {
	case 'S':
		return h.parameterStatus(msg)
	case 'C':
		if ddlTag(msg[5:]) && s.srv.cfg.Masking != nil {
			s.srv.cfg.Masking.Invalidate()
		}
		if s.track != nil {
			s.track.answered(typ, msg)
		}
		return nil
	case 'I', 's', 'V':
		s.track.answered(typ, msg)
		return nil
	case 'N':
		out, _, err := h.masked.serverError(typ, msg)
		if err != nil {
			return err
		}
		return h.write(out)
	case 'Z':
		if !h.ready && s.srv.cfg.Masking != nil {
			return h.decide(msg)
		}
		if h.masked != nil {
			if h.ready {
				h.masked.settle(s.syncsDone.Load() + 1)
			}
			defer h.masked.readyForQuery()
		}
		outcome := "ok"
		switch {
		case h.refused:
			outcome = "refused"
		case h.failed:
			outcome = "error"
		}
		h.failed, h.refused = false, false
		s.lastWasFatal.Store(false)
		if len(msg) != 6 {
			return &protocolError{"malformed ReadyForQuery from server"}
		}
		s.txStatus.Store(uint32(msg[5]))
		if !h.ready {
			// The first ReadyForQuery ends the startup; no client sync
			// point asked for it.
			h.ready = true
			s.ready.Store(true)
			_ = s.client.SetDeadline(time.Time{})
			_ = s.server.SetDeadline(time.Time{})
			s.markDecided()
		} else {
			if s.track != nil {
				s.track.ready()
			}
			s.syncDone(outcome)
		}
		s.ringWant.Store(false)
		if s.srv.draining.Load() && s.pending.Load() == 0 && msg[5] == 'I' {
			return errStopAfter
		}
		if s.wantRing() {
			// The session is idle: relay (session.go) hands it to the
			// io_uring loop once this pump has stopped after the
			// ReadyForQuery.
			s.ringWant.Store(true)
			return errStopAfter
		}
		return nil
	case 'E':
		s.lastWasFatal.Store(isFatal(msg[5:]))
		h.failed = true
		if h.masked != nil {
			out, refusal, err := h.masked.serverError(typ, msg)
			if err != nil {
				return err
			}
			h.refused = h.refused || refusal != nil
			if s.track != nil {
				code := errorCode(out)
				s.track.failed(code, refusal)
			}
			return h.write(out)
		}
		if s.track != nil {
			s.track.failed(errorCode(msg), nil)
		}
		return nil
	case 'G':
		return nil // peeked: it passes unchanged
	case 'R':
		return h.auth(msg)
	case 'K':
		return h.keyData(msg)
	case '1', '2', '3':
		if !h.swallowable {
			return nil // peeked: it passes unchanged
		}
		if s.swallowed(typ) {
			return nil
		}
		return h.write(msg)
	}
	return fmt.Errorf("unexpected intercepted message %q", typ)
}

// isFatal reports whether an ErrorResponse body has severity FATAL or PANIC.
func isFatal(body []byte) bool {
	for len(body) > 1 {
		field := body[0]
		v, rest, ok := cutNul(body[1:])
		if !ok {
			return false
		}
		if field == 'V' || field == 'S' {
			return v == "FATAL" || v == "PANIC"
		}
		body = rest
	}
	return false
}

// auth relays an authentication request, removing SASL mechanisms that
// need channel binding: the client's TLS session ends at the proxy, so a
// binding to it can never match the server's.
func (h *serverSide) auth(msg []byte) error {
	s := h.s
	if len(msg) >= 9 && binary.BigEndian.Uint32(msg[5:9]) == 10 { // AuthenticationSASL
		out, err := filterSASL(msg)
		if err != nil {
			return err
		}
		s.saslStarted.Store(true)
		if err := s.toCl.write(out, false); err != nil {
			return &writeError{err}
		}
		return nil
	}
	if err := s.toCl.write(msg, false); err != nil {
		return &writeError{err}
	}
	return nil
}

// filterSASL removes from an AuthenticationSASL message the mechanisms
// that need channel binding.
func filterSASL(msg []byte) ([]byte, error) {
	var sasl pgproto3.AuthenticationSASL
	if err := sasl.Decode(msg[5:]); err != nil {
		return nil, &protocolError{"malformed AuthenticationSASL from server"}
	}
	mechs := sasl.AuthMechanisms[:0]
	for _, m := range sasl.AuthMechanisms {
		if !strings.HasSuffix(m, "-PLUS") {
			mechs = append(mechs, m)
		}
	}
	if len(mechs) == 0 {
		return nil, &clientError{code: codeInvalidAuthSpec, msg: "pgveil: the server offers only SASL mechanisms with channel binding, which cannot pass through a proxy"}
	}
	sasl.AuthMechanisms = mechs
	return sasl.Encode(nil)
}

// keyData replaces the server's cancel secret with one of the proxy's own,
// so that a client can only cancel its own session's queries. The process
// id is kept: clients compare it with NotificationResponse senders.
func (h *serverSide) keyData(msg []byte) error {
	s := h.s
	body := msg[5:]
	if len(body) < 8 || len(body) > 4+256 {
		return &protocolError{"malformed BackendKeyData from server"}
	}
	key := append([]byte(nil), body...)
	s.serverKey.Store(&key)
	secret := make([]byte, len(body)-4)
	if _, err := rand.Read(secret); err != nil {
		return err
	}
	s.cancelKey = cancelKey{pid: binary.BigEndian.Uint32(body[0:4]), secret: string(secret)}
	s.srv.registerCancel(s, s.cancelKey)
	out := make([]byte, 0, len(msg))
	out = append(out, msg[:9]...)
	out = append(out, secret...)
	if err := s.toCl.write(out, false); err != nil {
		return &writeError{err}
	}
	return nil
}

func (h *serverSide) write(b []byte) error {
	if err := h.s.toCl.write(b, false); err != nil {
		return &writeError{err}
	}
	return nil
}

// decide handles the first ReadyForQuery of a proxy with a policy: it
// settles whether the session is masked and, if so, reads the session's
// search_path before letting the client in.
func (h *serverSide) decide(msg []byte) error {
	s := h.s
	h.ready = true
	s.ready.Store(true)
	s.txStatus.Store(uint32(msg[5]))
	m, err := s.decideMode()
	if err != nil {
		return err
	}
	if m == nil && s.track == nil {
		_ = s.client.SetDeadline(time.Time{})
		_ = s.server.SetDeadline(time.Time{})
		s.markDecided()
		return h.write(msg)
	}
	// Masked sessions, and relayed ones whose statements are tracked,
	// need the name-resolution context first.
	if m != nil {
		h.masked = m
		s.masked.Store(m)
	}
	h.internal = true
	h.held = append([]byte(nil), msg...)
	if err := s.toSrv.write(contextQuery, false); err != nil {
		return &writeError{err}
	}
	return nil
}

// contextQuery reads what name resolution depends on: search_path and the
// current user (which SET ROLE changes and "$user" expands to).
//
// It runs with the extended protocol, as a prepared statement and portal
// of the proxy's own (contextName, in the reserved namespace): a simple
// Query would destroy the client's unnamed prepared statement and unnamed
// portal (PostgreSQL documentation §55.2.3, "Extended Query"), which a
// client may still use after the proxy re-read the context. The leading
// Closes (not an error for a portal or statement that does not exist)
// remove those left over by a re-read that failed half-way; the trailing
// ones remove the portal (in a transaction block it would outlive the
// Sync) and the statement. The server answers CloseComplete twice,
// ParseComplete, BindComplete, the DataRow, CommandComplete, CloseComplete
// twice and ReadyForQuery; after an error (say, in an aborted
// transaction), ErrorResponse and ReadyForQuery.
var contextQuery = func() []byte {
	var b []byte
	b, _ = (&pgproto3.Close{ObjectType: 'P', Name: contextName}).Encode(b)
	b, _ = (&pgproto3.Close{ObjectType: 'S', Name: contextName}).Encode(b)
	b, _ = (&pgproto3.Parse{Name: contextName, Query: "SELECT pg_catalog.current_setting('search_path'), CURRENT_USER"}).Encode(b)
	b, _ = (&pgproto3.Bind{DestinationPortal: contextName, PreparedStatement: contextName}).Encode(b)
	b, _ = (&pgproto3.Execute{Portal: contextName}).Encode(b)
	b, _ = (&pgproto3.Close{ObjectType: 'P', Name: contextName}).Encode(b)
	b, _ = (&pgproto3.Close{ObjectType: 'S', Name: contextName}).Encode(b)
	b, _ = (&pgproto3.Sync{}).Encode(b)
	return b
}()

// contextName names the prepared statement and portal of contextQuery.
const contextName = tplPrefix + "context"

// internalReply consumes the answer to the proxy's own startup query.
func (h *serverSide) internalReply(typ byte, msg []byte) error {
	s := h.s
	switch typ {
	case 'T', 'C', 'S', 'N', '1', '2', '3':
		if typ == 'S' {
			return h.parameterStatus(msg)
		}
		return nil
	case 'D':
		path, user, err := contextRow(msg)
		if err != nil {
			return err
		}
		if h.masked != nil {
			h.masked.setContext(path, user)
		}
		if s.track != nil {
			s.track.setContext(path, user)
		}
		return nil
	case 'E':
		return &clientError{code: codeConnectionFailure, msg: "pgveil: the session's search_path could not be read"}
	case 'Z':
		h.internal = false
		_ = s.client.SetDeadline(time.Time{})
		_ = s.server.SetDeadline(time.Time{})
		s.markDecided()
		if h.masked != nil {
			s.srv.log.Info("session masked", "session", s.id, "user", s.user, "grants", h.masked.grants.Key())
		}
		return h.write(h.held)
	}
	return &protocolError{fmt.Sprintf("unexpected message %q during startup query", typ)}
}

// parameterStatus records a server setting; in a masked session the
// pinned settings may never change.
func (h *serverSide) parameterStatus(msg []byte) error {
	var ps pgproto3.ParameterStatus
	if err := ps.Decode(msg[5:]); err != nil {
		return &protocolError{"malformed ParameterStatus from server"}
	}
	h.s.params[ps.Name] = ps.Value
	if ps.Name == "standard_conforming_strings" {
		h.s.scsOff.Store(ps.Value == "off")
	}
	if h.masked != nil {
		switch {
		case ps.Name == "client_encoding" && !utf8Encoding(ps.Value),
			ps.Name == "standard_conforming_strings" && ps.Value != "on":
			return &clientError{code: codeProtocolViolation, msg: "pgveil: " + ps.Name + " changed in a masked session"}
		}
	}
	// The message itself passes through as a peeked message (or is
	// dropped during the proxy's own startup query).
	return nil
}

// ddlTag reports whether a CommandComplete tag says the schema or the
// privileges may have changed.
func ddlTag(body []byte) bool {
	for _, p := range []string{"CREATE", "ALTER", "DROP", "GRANT", "REVOKE", "COMMENT", "SECURITY LABEL", "IMPORT FOREIGN SCHEMA", "REFRESH"} {
		if len(body) >= len(p) && string(body[:len(p)]) == p {
			return true
		}
	}
	return false
}

// rewriteRefusalFunctionCall refuses the FunctionCall message for masked sessions.
var rewriteRefusalFunctionCall = rewrite.Refusal{Rule: "function-call", Message: "the fast-path function call protocol is not allowed for masked sessions"}

// refreshReply consumes the answer to a search_path refresh (see
// maskedSession.refreshPath and contextQuery). If the query fails (in an aborted transaction),
// the previous value stays and the next statement tries again.
func (h *serverSide) refreshReply(typ byte, msg []byte) error {
	m := h.masked
	switch typ {
	case 'T', 'C', 'N', '1', '2', '3':
		return nil
	case 'S':
		return h.parameterStatus(msg)
	case 'D':
		path, user, err := contextRow(msg)
		if err != nil {
			return err
		}
		h.refreshPath, h.refreshUser = path, user
		return nil
	case 'E':
		h.refreshPath = nil
		return nil
	case 'Z':
		if len(msg) != 6 {
			return &protocolError{"malformed ReadyForQuery from server"}
		}
		h.s.txStatus.Store(uint32(msg[5]))
		if h.refreshPath != nil {
			m.setContext(h.refreshPath, h.refreshUser)
		}
		m.refreshOK.Store(h.refreshPath != nil)
		h.refreshPath = nil
		m.refreshing.Store(false)
		select {
		case m.refreshed <- struct{}{}:
		default:
		}
		return nil
	}
	return &protocolError{fmt.Sprintf("unexpected message %q during search_path refresh", typ)}
}

// contextRow parses the DataRow answering contextQuery.
func contextRow(msg []byte) ([]string, string, error) {
	var row pgproto3.DataRow
	if err := row.Decode(msg[5:]); err != nil || len(row.Values) != 2 {
		return nil, "", &protocolError{"malformed answer to the session context query"}
	}
	path, err := catalog.ParseSearchPath(string(row.Values[0]))
	if err != nil {
		return nil, "", &clientError{code: codeProtocolViolation, msg: "pgveil: cannot read the session's search_path: " + err.Error()}
	}
	if path == nil {
		path = []string{}
	}
	return path, string(row.Values[1]), nil
}
