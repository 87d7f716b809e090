package proxy

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Startup packet codes (PostgreSQL documentation §55.7, "Message Formats").
const (
	protocolVersion3  = 3 << 16 // major 3 in the high 16 bits
	cancelRequestCode = 80877102
	gssEncRequestCode = 80877104
	// maxStartupPacket is MAX_STARTUP_PACKET_LENGTH in
	// src/include/libpq/pqcomm.h.
	maxStartupPacket = 10000
)

// SQLSTATE codes the proxy sends (PostgreSQL documentation, Appendix A).
const (
	codeProtocolViolation   = "08P01"
	codeConnectionFailure   = "08006"
	codeAdminShutdown       = "57P01"
	codeInvalidAuthSpec     = "28000"
	codeFeatureNotSupported = "0A000"
	codeTooManyConnections  = "53300"
	codeInternalError       = "XX000"
	codeIdleSessionTimeout  = "57P05"
	codeIdleInTxTimeout     = "25P03"
	codeConfigFileError     = "F0000"
)

// terminateGrace is how long the proxy waits for the server to close its
// side after a client's Terminate.
const terminateGrace = 2 * time.Second

// Reasons a session ends, used to pick what the client is told.
var (
	errShutdown     = errors.New("server shutting down")
	errClientGone   = errors.New("client disconnected")
	errTerminated   = errors.New("client terminated the session")
	errUpstreamGone = errors.New("upstream connection lost")
)

// clientError is an error the client must see as an ErrorResponse.
type clientError struct {
	code, msg string
	// kind, if set, names the outcome for logs and metrics (default
	// "refused").
	kind string
}

func (e *clientError) Error() string { return e.msg + " (SQLSTATE " + e.code + ")" }

// session is one client connection and its server connection.
type session struct {
	srv    *Server
	id     uint64
	start  time.Time
	client net.Conn
	server net.Conn
	toCl   syncWriter
	toSrv  syncWriter

	user, database, appName string
	clientTLS, serverTLS    bool

	serverKey atomic.Pointer[[]byte] // the server's BackendKeyData body: pid and secret
	cancelKey cancelKey

	// pending counts sync points (Query, Sync, FunctionCall) sent to the
	// server whose ReadyForQuery has not come back.
	pending atomic.Int64
	// ready is set at the first ReadyForQuery.
	ready atomic.Bool
	// txStatus is the status byte of the last ReadyForQuery.
	txStatus atomic.Uint32
	// saslStarted is set when the server asked for SASL, so the next
	// client 'p' message is the SASLInitialResponse.
	saslStarted atomic.Bool
	// params holds the server's ParameterStatus values (server side only).
	params map[string]string
	// up and down are the session's pumps once it relays (restProber).
	up, down atomic.Pointer[pump]
	// probedUp and probedDown are the rest sequence numbers the prober
	// saw at its last tick and whether it already probed them (prober
	// goroutine only).
	probed [2]restProbe
	// scsOff mirrors params["standard_conforming_strings"] == "off" for
	// the client side (the statement tracker's literal scanner).
	scsOff atomic.Bool
	// masked is set at the first ReadyForQuery for sessions whose
	// statements are rewritten; modeDecided is closed once that decision
	// is made, and the client side waits for it before relaying queries.
	masked      atomic.Pointer[maskedSession]
	modeDecided chan struct{}
	// copyIn, set by the server side at CopyInResponse, encrypts the
	// fields of the client's COPY data for an encrypted column.
	copyIn atomic.Pointer[copyTransform]
	// track, set with the mode, follows statements to their outcome for
	// Config.Statements; nil when no sink is configured.
	track      *tracker
	decideOnce sync.Once
	// terminating is set when the client sent Terminate.
	terminating atomic.Bool
	// endedCh is closed when the session ends; endingCh when it starts
	// to (before the connections are closed, which waits for a pump
	// blocked in its read callback).
	endedCh, endingCh chan struct{}
	// lastWasFatal is set when the last ErrorResponse from the server was FATAL.
	lastWasFatal atomic.Bool

	// bytesIn and bytesOut count the bytes read from the client and from
	// the server; queries counts answered sync points (a Query, a Sync, a
	// FunctionCall); busySince is when the oldest unanswered one was sent,
	// in nanoseconds since start.
	bytesIn, bytesOut atomic.Int64
	queries           atomic.Int64
	busySince         atomic.Int64
	// clock is, per side (0 the client's, 1 the server's), the time in
	// nanoseconds since start that the side read for the buffer its pump
	// is handling, 0 before the first read, or -1 outside a buffer (see
	// stamp). Each is its side's pump's.
	clock [2]int64
	// started is set once user, database, appName and clientTLS are known;
	// they are not written after that.
	started atomic.Bool
	// admitted is set when the session counts against MaxClientConn;
	// console marks an admin console session.
	admitted, console bool
	// syncsSent and syncsDone count sync points sent and answered.
	syncsSent, syncsDone atomic.Uint64
	// pcopy keeps a relayed session's count right around COPY FROM STDIN
	// (copyrelay.go).
	pcopy plainCopy
	// swallows lists answers the proxy caused itself (CloseComplete and
	// ParseComplete of a statement prepared again) that the server side
	// drops, per batch (the sync point they precede); swallowing says
	// the list is not empty.
	swallowMu  sync.Mutex
	swallows   []swallowEntry
	swallowing atomic.Bool
	// idleBytes and idleSince belong to the server's idle janitor.
	idleBytes int64
	idleSince time.Time

	// clientAddr is the client's address (s.client changes when the
	// session leaves the io_uring loop).
	clientAddr string
	// ringMu guards ring (the session while the io_uring loop holds it)
	// and ringNoEntry (set when the session starts to end).
	ringMu      sync.Mutex
	ring        *ringSess
	ringNoEntry bool
	// ringWant is set by the server side at an idle ReadyForQuery after
	// which the session may go to the loop; ringActive while it is
	// there; ringOff when it may not go at all.
	ringWant, ringActive, ringOff atomic.Bool

	endOnce  sync.Once
	endCause error
	endMu    sync.Mutex
	closeCl  sync.Once
	closeSrv sync.Once
}

func newSession(srv *Server, conn net.Conn, id uint64) *session {
	return &session{srv: srv, id: id, start: time.Now(), clock: [2]int64{-1, -1}, client: conn, clientAddr: conn.RemoteAddr().String(), params: map[string]string{}, modeDecided: make(chan struct{}), endedCh: make(chan struct{}), endingCh: make(chan struct{})}
}

// serve runs the session to its end.
func (s *session) serve() {
	defer s.srv.removeSession(s)
	defer s.closeClient()
	log := s.srv.log.With("session", s.id, "client", s.client.RemoteAddr().String())

	_ = s.client.SetDeadline(time.Now().Add(s.srv.cfg.StartupTimeout))
	startup, err := s.readStartup()
	if err != nil {
		var ce *clientError
		if errors.As(err, &ce) {
			s.sendError(s.client, "FATAL", ce.code, ce.msg)
			log.Info("session refused", "err", err)
		} else if !errors.Is(err, io.EOF) && !errors.Is(err, errCancelHandled) {
			log.Debug("startup failed", "err", err)
		}
		return
	}
	s.started.Store(true)
	log = log.With("user", s.user, "database", s.database)
	if s.srv.cfg.TLSRequired && !s.clientTLS {
		s.sendError(s.client, "FATAL", codeInvalidAuthSpec, "pgveil: TLS is required; connect with sslmode=require or stronger")
		log.Info("session refused", "err", "client did not use TLS")
		return
	}
	if s.srv.cfg.AdminDatabase != "" && s.database == s.srv.cfg.AdminDatabase {
		s.console = true
		if !s.srv.isAdmin(s.user) {
			s.sendError(s.client, "FATAL", codeInsufficientPrivilege, fmt.Sprintf("pgveil: user %q may not use the admin console (not listed in --admin-users)", s.user))
			log.Info("session refused", "err", "not an admin user", "outcome", "refused")
			return
		}
		s.serveConsole(startup, log)
		return
	}
	if !s.srv.admit(s) {
		s.sendError(s.client, "FATAL", codeTooManyConnections, "sorry, too many clients already (pgveil --max-client-conn)")
		log.Info("session refused", "err", "too many clients", "outcome", "refused")
		s.srv.cfg.Observer.Rejected("max_client_conn")
		return
	}

	ctx, cancel := context.WithTimeout(context.Background(), s.srv.cfg.ConnectTimeout)
	dialStart := time.Now()
	server, serverTLS, err := s.srv.cfg.Upstream.dial(ctx, s.srv.cfg.ConnectTimeout)
	cancel()
	s.srv.cfg.Observer.UpstreamConnected(time.Since(dialStart), err)
	if err != nil {
		s.sendError(s.client, "FATAL", codeConnectionFailure, "pgveil: cannot connect to the upstream server")
		log.Warn("upstream connect failed", "err", err)
		return
	}
	s.server, s.serverTLS = server, serverTLS
	s.toCl.setConn(s.client)
	s.toSrv.setConn(server)
	defer s.closeServer()
	_ = server.SetDeadline(time.Now().Add(s.srv.cfg.StartupTimeout))
	if _, err := server.Write(startup); err != nil {
		s.sendError(s.client, "FATAL", codeConnectionFailure, "pgveil: upstream server closed the connection")
		log.Warn("upstream write failed", "err", err)
		return
	}
	log.Info("session start", "application_name", s.appName, "client_tls", s.clientTLS, "server_tls", s.serverTLS)
	s.srv.cfg.Observer.SessionStarted()

	cause := s.relay()
	if s.track != nil {
		s.track.end() // both sides are done: no statement follows
	}
	elapsed := time.Since(s.start)
	s.srv.cfg.Observer.SessionEnded(outcome(cause), elapsed)
	log.Info("session end", "elapsed", elapsed.Round(time.Millisecond), "outcome", outcome(cause),
		"bytes_in", s.bytesIn.Load(), "bytes_out", s.bytesOut.Load(), "queries", s.queries.Load())
}

// swallowEntry counts answers to drop in one batch.
type swallowEntry struct {
	batch              uint64
	parse, close, bind int
	// lost, if set, is called when the batch ends with parse answers
	// still expected (the Parse failed).
	lost func()
}

// swallow arranges for the server side to drop parse ParseComplete and
// close CloseComplete messages of the batch the client is sending now
// (called from the client side before the messages are sent). Within a
// batch these answers carry no data, so dropping any of them leaves the
// client exactly the stream it expects.
func (s *session) swallow(parse, close int) {
	s.swallowBatch(swallowEntry{parse: parse, close: close})
}

// swallowBatch is swallow with BindComplete answers (bind) and a callback
// for a Parse that failed.
func (s *session) swallowBatch(e swallowEntry) {
	s.swallowMu.Lock()
	defer s.swallowMu.Unlock()
	batch := s.syncsSent.Load() + 1
	if n := len(s.swallows); n > 0 && s.swallows[n-1].batch == batch {
		last := &s.swallows[n-1]
		last.parse += e.parse
		last.close += e.close
		last.bind += e.bind
		if e.lost != nil {
			if prev, next := last.lost, e.lost; prev != nil {
				// (Capturing next, not e, keeps e off the heap.)
				last.lost = func() { prev(); next() }
			} else {
				last.lost = e.lost
			}
		}
	} else {
		e.batch = batch
		s.swallows = append(s.swallows, e)
	}
	s.swallowing.Store(true)
}

// swallowed reports whether the answer typ ('1', '2' or '3') of the batch being
// answered is one the proxy caused, and if so counts it dropped.
func (s *session) swallowed(typ byte) bool {
	s.swallowMu.Lock()
	defer s.swallowMu.Unlock()
	batch := s.syncsDone.Load() + 1
	for i := range s.swallows {
		e := &s.swallows[i]
		if e.batch != batch {
			continue
		}
		switch {
		case typ == '1' && e.parse > 0:
			e.parse--
		case typ == '3' && e.close > 0:
			e.close--
		case typ == '2' && e.bind > 0:
			e.bind--
		default:
			return false
		}
		if e.parse == 0 && e.close == 0 && e.bind == 0 {
			s.swallows = slices.Delete(s.swallows, i, i+1)
			s.swallowing.Store(len(s.swallows) > 0)
		}
		return true
	}
	return false
}

// syncSent records a sync point (Query, Sync, FunctionCall) sent to the
// server; its ReadyForQuery calls syncDone.
func (s *session) syncSent() {
	s.syncsSent.Add(1)
	if s.pending.Add(1) == 1 {
		s.busySince.Store(s.stamp(0))
	}
}

// stamp returns the time in nanoseconds since the session's start, read
// once per buffer a side's pump handles: the messages of one buffer
// arrived together, and the busy-time metric and the statement tracker
// share one clock read (a system clock read is most of what a message's
// tracking costs otherwise). Outside a buffer it reads the clock. side
// is 0 for the client side, 1 for the server side; only that side's
// goroutine may call it.
func (s *session) stamp(side int) int64 {
	switch v := s.clock[side]; {
	case v > 0:
		return v
	case v == 0:
		v = max(1, int64(time.Since(s.start)))
		s.clock[side] = v
		return v
	}
	return int64(time.Since(s.start))
}

// syncDone records the ReadyForQuery that answers a sync point. outcome is
// ok, error or refused.
func (s *session) syncDone(outcome string) {
	n := s.pending.Add(-1)
	if n < 0 {
		s.pending.Store(0)
		n = 0
	}
	s.queries.Add(1)
	done := s.syncsDone.Add(1)
	if s.swallowing.Load() {
		// Answers the server skipped after an error are not coming.
		var lost []func()
		s.swallowMu.Lock()
		s.swallows = slices.DeleteFunc(s.swallows, func(e swallowEntry) bool {
			if e.batch > done {
				return false
			}
			if e.parse > 0 && e.lost != nil {
				lost = append(lost, e.lost)
			}
			return true
		})
		s.swallowing.Store(len(s.swallows) > 0)
		s.swallowMu.Unlock()
		for _, f := range lost {
			f()
		}
	}
	d := time.Duration(-1)
	if n == 0 {
		d = time.Duration(s.stamp(1) - s.busySince.Load())
	}
	s.srv.cfg.Observer.QueryDone(outcome, d)
}

// outcome names a session's end cause for the log.
func outcome(err error) string {
	var ce *clientError
	var pe *protocolError
	switch {
	case err == nil, errors.Is(err, errTerminated):
		return "ok"
	case errors.Is(err, errClientGone):
		return "client_gone"
	case errors.Is(err, errUpstreamGone):
		return "upstream_gone"
	case errors.Is(err, errShutdown):
		return "shutdown"
	case errors.As(err, &pe):
		return "protocol_violation"
	case errors.As(err, &ce):
		if ce.kind != "" {
			return ce.kind
		}
		return "refused"
	default:
		return "error"
	}
}

// relay runs both pumps until the session ends and returns the cause.
//
// Each pump runs in a goroutine of its own, except while the io_uring loop
// holds the session (Config.IOUring, uring.go). The server side asks for
// that at an idle ReadyForQuery (wantRing) by stopping its pump; relay
// then stops the client side's pump with a read deadline in the past, and
// once both stopped between reads hands the sockets to the loop. If the
// client side does not stop within ringParkTimeout (it may be blocked
// writing to a server that waits for its own output to be read), the
// server side resumes and the attempt is dropped.
func (s *session) relay() error {
	max := s.srv.cfg.MaxMessageSize
	up := newPump(s.client, &s.toSrv, &clientSide{s: s}, max, &s.bytesIn)
	down := newPump(s.server, &s.toCl, &serverSide{s: s}, max, &s.bytesOut)
	up.rest, down.rest = clientRest, serverRest
	up.stamp, down.stamp = &s.clock[0], &s.clock[1]
	s.up.Store(up)
	s.down.Store(down)
	pumps := [2]*pump{up, down}
	type result struct {
		i   int
		err error
	}
	results := make(chan result, 2)
	run := func(i int) {
		p := pumps[i]
		go func() { results <- result{i, s.runSafely(p)} }()
	}
	run(0)
	run(1)
	var done, parked [2]bool
	asking := false // the client side was asked to stop
	var timer *time.Timer
	var timeout <-chan time.Time
	stopTimer := func() {
		if timer != nil {
			timer.Stop()
			timer, timeout = nil, nil
		}
	}
	defer stopTimer()
	for !done[0] || !done[1] {
		var r result
		select {
		case r = <-results:
		case <-timeout:
			timer, timeout = nil, nil
			if parked[1] {
				parked[1] = false
				run(1)
			}
			continue
		}
		switch {
		case r.i == 1 && errors.Is(r.err, errStopped) && s.ringWant.Swap(false):
			if done[0] {
				run(1)
				continue
			}
			parked[1] = true
			if !asking {
				asking = true
				_ = pumps[0].src.SetReadDeadline(time.Unix(1, 0))
			}
			timer = time.NewTimer(ringParkTimeout)
			timeout = timer.C
			continue
		case r.i == 0 && asking:
			asking = false
			stopTimer()
			if errors.Is(r.err, os.ErrDeadlineExceeded) {
				_ = pumps[0].src.SetReadDeadline(time.Time{})
				if !parked[1] {
					run(0)
					continue
				}
				parked[0] = true
			}
		}
		if parked[0] && parked[1] {
			parked = [2]bool{}
			rs := s.enterRing(pumps)
			if rs == nil {
				run(0)
				run(1)
				continue
			}
			<-rs.left
			pumps = s.ringReturn(rs)
			for i := range 2 {
				if rs.err[i] != nil {
					results <- result{i, rs.err[i]}
				} else {
					run(i)
				}
			}
			continue
		}
		if r.i == 0 {
			done[0] = true
			if parked[1] {
				// The server side stopped for the loop, but the client
				// side ended: the server side finishes as usual.
				parked[1] = false
				run(1)
			}
			s.fromPumpUp(r.err)
		} else {
			done[1] = true
			s.fromPumpDown(r.err)
		}
	}
	return s.endCause
}

// ringParkTimeout bounds the wait for the client side to stop when the
// session is to go to the io_uring loop.
const ringParkTimeout = 100 * time.Millisecond

// wantRing, called by the server side at a ReadyForQuery, says whether the
// session should go to the io_uring loop now: it passes unchanged over
// plain sockets, nothing is unanswered, and the proxy is not draining.
func (s *session) wantRing() bool {
	return s.srv.IOUring() && !s.ringActive.Load() && !s.ringOff.Load() &&
		!s.clientTLS && !s.serverTLS && s.masked.Load() == nil &&
		s.pending.Load() == 0 && !s.srv.draining.Load()
}

// enterRing hands the session's sockets to the io_uring loop, with both
// pumps stopped. It returns nil when the session may not go (it is
// ending, or its sockets cannot be taken).
func (s *session) enterRing(p [2]*pump) *ringSess {
	s.ringMu.Lock()
	defer s.ringMu.Unlock()
	if s.ringNoEntry {
		return nil
	}
	cfd, err := dupConnFD(s.client)
	if err != nil {
		s.ringOff.Store(true)
		return nil
	}
	sfd, err := dupConnFD(s.server)
	if err != nil {
		syscall.Close(cfd)
		s.ringOff.Store(true)
		return nil
	}
	// io_uring waits for readiness itself; on a blocking socket it never
	// answers EAGAIN (net.FileConn makes the socket non-blocking again
	// when the session leaves the loop).
	_ = syscall.SetNonblock(cfd, false)
	_ = syscall.SetNonblock(sfd, false)
	rs := &ringSess{s: s, p: p, fd: [2]int{cfd, sfd}, hand: s.srv.ring.hand, left: make(chan struct{}), swapped: make(chan struct{})}
	rs.w[0], rs.w[1] = &ringWriter{}, &ringWriter{}
	s.toSrv.toRing(rs.w[0])
	s.toCl.toRing(rs.w[1])
	// Closing the connections takes the sockets out of the runtime's
	// poller, whose wake-ups the loop exists to avoid; the duplicates
	// keep them open.
	_ = s.client.Close()
	_ = s.server.Close()
	s.ring = rs
	if s.track != nil {
		s.track.inLoop = true
		if s.track.sink != nil && !s.track.blocks {
			s.track.hand = rs.hand
		}
	}
	s.ringActive.Store(true)
	s.srv.ring.post(ringReq{rs: rs})
	return rs
}

// ringReturn takes the session back from the loop (which let go of it):
// new connections over the same sockets, with what the loop could not
// write yet queued first, and new pumps in the old ones' state.
func (s *session) ringReturn(rs *ringSess) [2]*pump {
	if rs.handSeq > 0 {
		// The statements the loop relayed reach the sinks first.
		rs.hand.wait(rs.handSeq)
	}
	var conns [2]net.Conn
	for i := range 2 {
		c, err := fdConn(rs.fd[i])
		if err != nil {
			s.srv.log.Warn("io_uring relay: cannot take a socket back", "session", s.id, "err", err)
			c = closedConn{}
			if rs.err[i] == nil {
				rs.err[i] = &readError{err}
			}
		}
		conns[i] = c
	}
	var out [2]*pump
	if rs.dead {
		// The loop failed while it held the session (ringLoop.fail): what
		// it had queued or read may be incomplete or already sent, so
		// nothing of it is used (the pumps do not run again: rs.err ends
		// the session), and the sockets are shut down when closed.
		for i := range 2 {
			conns[i] = shutdownOnClose{conns[i]}
		}
		s.toSrv.fromRing(conns[1], nil)
		s.toCl.fromRing(conns[0], nil)
		for i, old := range rs.p {
			out[i] = newPump(conns[i], old.dst, old.h, old.maxSize, old.count)
			out[i].stamp = old.stamp
		}
	} else {
		s.toSrv.fromRing(conns[1], rs.w[0].rest())
		s.toCl.fromRing(conns[0], rs.w[1].rest())
		for i, old := range rs.p {
			p := newPump(conns[i], old.dst, old.h, old.maxSize, old.count)
			p.buf, p.r, p.w, p.remaining, p.last, p.rest, p.stamp = old.buf, old.r, old.w, old.remaining, old.last, old.rest, old.stamp
			out[i] = p
		}
	}
	s.ringMu.Lock()
	s.client, s.server = conns[0], conns[1]
	s.ring = nil
	s.ringMu.Unlock()
	s.up.Store(out[0])
	s.down.Store(out[1])
	if s.track != nil {
		s.track.inLoop, s.track.hand = false, nil
	}
	s.ringActive.Store(false)
	// What the pumps relayed last (a Terminate, the ReadyForQuery before
	// a draining proxy ends the session) goes out before anything else.
	s.toSrv.sendQueued()
	s.toCl.sendQueued()
	close(rs.swapped)
	return out
}

// leaveRing takes the session back from the io_uring loop if it is there
// (and keeps it from going): session.end calls it before it touches the
// connections.
func (s *session) leaveRing() {
	s.ringMu.Lock()
	s.ringNoEntry = true
	rs := s.ring
	s.ringMu.Unlock()
	if rs == nil {
		return
	}
	s.srv.ring.post(ringReq{rs: rs, leave: true})
	<-rs.swapped
}

// runSafely runs a pump and turns a panic in it (a bug) into the end of
// this session alone, with SQLSTATE XX000 for the client and the stack in
// the log (which holds no values: a stack names code, not data).
func (s *session) runSafely(p *pump) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = s.internalError(r)
		}
	}()
	return p.run()
}

// internalError logs a recovered panic and returns the error that ends the
// session.
func (s *session) internalError(r any) error {
	s.srv.log.Error("internal error: session ended", "session", s.id, "panic", fmt.Sprintf("%T", r), "stack", string(debug.Stack()))
	return &clientError{code: codeInternalError, msg: "pgveil: internal error; the session was ended", kind: "internal_error"}
}

// fromPumpUp classifies how the client-to-server pump ended.
func (s *session) fromPumpUp(err error) error {
	var re *readError
	var we *writeError
	var pe *protocolError
	switch {
	case errors.Is(err, errStopped):
		err = errTerminated
	case errors.As(err, &pe):
	case errors.As(err, &re):
		err = errClientGone
	case errors.As(err, &we):
		err = errUpstreamGone
	}
	s.end(err)
	return err
}

// fromPumpDown classifies how the server-to-client pump ended.
func (s *session) fromPumpDown(err error) error {
	var re *readError
	var we *writeError
	switch {
	case errors.Is(err, errStopped):
		err = errShutdown
	case errors.As(err, &re) && s.terminating.Load():
		err = errTerminated
	case errors.As(err, &re):
		err = errUpstreamGone
	case errors.As(err, &we):
		err = errClientGone
	}
	s.end(err)
	return err
}

// end ends the session once, telling each side what it must know, and
// closes both connections so that both pumps return.
func (s *session) end(cause error) {
	s.endOnce.Do(func() {
		s.leaveRing()
		close(s.endingCh)
		defer s.markDecided()
		defer close(s.endedCh)
		s.endMu.Lock()
		s.endCause = cause
		s.endMu.Unlock()
		var pe *protocolError
		var ce *clientError
		switch {
		case errors.Is(cause, errTerminated) && s.server != nil:
			// The server ends the backend after Terminate and closes its
			// side; the server-side pump reads until then, so nothing it
			// sent is reset. The deadline bounds a server that does not.
			_ = s.server.SetReadDeadline(time.Now().Add(terminateGrace))
			s.closeClient()
			return
		case errors.Is(cause, errClientGone):
			s.cancelQueryIfBusy()
			s.terminateServer()
		case errors.Is(cause, errUpstreamGone):
			if !s.lastWasFatal.Load() {
				s.inject(&s.toCl, "FATAL", codeConnectionFailure, "pgveil: connection to the upstream server was lost")
			}
		case errors.Is(cause, errShutdown):
			s.inject(&s.toCl, "FATAL", codeAdminShutdown, "terminating connection because pgveil is shutting down")
			s.cancelQueryIfBusy()
			s.terminateServer()
		case errors.As(cause, &pe):
			s.inject(&s.toCl, "FATAL", codeProtocolViolation, "pgveil: "+pe.msg)
			s.terminateServer()
			s.drainClient()
		case errors.As(cause, &ce):
			s.inject(&s.toCl, "FATAL", ce.code, ce.msg)
			s.terminateServer()
		default:
			s.cancelQueryIfBusy()
			s.terminateServer()
		}
		s.closeServer()
		s.closeClient()
	})
}

// markDecided releases the client side once the session's mode is known
// (or the session ends).
func (s *session) markDecided() { s.decideOnce.Do(func() { close(s.modeDecided) }) }

// kill ends the session from outside its pumps (forced shutdown).
func (s *session) kill(cause error) { s.end(cause) }

// endIfIdle ends the session with 57P01 if it is idle outside a
// transaction; otherwise the server-side pump ends it at its next idle
// ReadyForQuery (see serverSide.message).
func (s *session) endIfIdle() {
	if s.ready.Load() && s.pending.Load() == 0 && byte(s.txStatus.Load()) == 'I' {
		s.end(errShutdown)
	}
}

// drainClient lets a client that is still sending (say, the rest of an
// oversized message) read the error it was just sent: closing a socket with
// unread input resets the connection, and the reset can overtake the error.
// It stops sending, then discards input for a bounded time and amount.
func (s *session) drainClient() {
	if cw, ok := s.client.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = s.client.SetReadDeadline(time.Now().Add(time.Second))
	_, _ = io.CopyN(io.Discard, s.client, 64<<20)
}

func (s *session) closeClient() { s.closeCl.Do(func() { s.client.Close() }) }

func (s *session) closeServer() {
	if s.server == nil {
		return
	}
	s.closeSrv.Do(func() { s.server.Close() })
}

// terminateServer sends Terminate to the server if it is between messages.
func (s *session) terminateServer() {
	if s.server == nil {
		return
	}
	_ = s.server.SetWriteDeadline(time.Now().Add(time.Second))
	s.toSrv.inject([]byte{'X', 0, 0, 0, 4})
}

// cancelQueryIfBusy asks the server to cancel the running query when the
// client left (or the proxy stops) while one may be running.
func (s *session) cancelQueryIfBusy() {
	if s.pending.Load() == 0 || s.serverKey.Load() == nil {
		return
	}
	s.sendCancel()
}

// sendCancel sends a CancelRequest for this session's backend on a new
// upstream connection.
func (s *session) sendCancel() {
	ctx, cancel := context.WithTimeout(context.Background(), s.srv.cfg.ConnectTimeout)
	defer cancel()
	conn, _, err := s.srv.cfg.Upstream.dial(ctx, s.srv.cfg.ConnectTimeout)
	if err != nil {
		s.srv.log.Warn("cancel: upstream connect failed", "session", s.id, "err", err)
		return
	}
	defer conn.Close()
	key := *s.serverKey.Load()
	msg := make([]byte, 8, 8+len(key))
	binary.BigEndian.PutUint32(msg[0:4], uint32(8+len(key)))
	binary.BigEndian.PutUint32(msg[4:8], cancelRequestCode)
	msg = append(msg, key...)
	_ = conn.SetDeadline(time.Now().Add(s.srv.cfg.ConnectTimeout))
	if _, err := conn.Write(msg); err != nil {
		s.srv.log.Warn("cancel: upstream write failed", "session", s.id, "err", err)
		return
	}
	// The server closes the connection once it has read the request;
	// waiting for that keeps the cancel ahead of whatever follows.
	_, _ = conn.Read(make([]byte, 1))
}

// inject writes an ErrorResponse to w if it is between messages.
func (s *session) inject(w *syncWriter, severity, code, msg string) {
	if w.conn == nil {
		return
	}
	_ = w.conn.SetWriteDeadline(time.Now().Add(time.Second))
	w.inject(errorMessage(severity, code, msg))
}

// sendError writes an ErrorResponse straight to conn (before relaying).
func (s *session) sendError(conn net.Conn, severity, code, msg string) {
	_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = conn.Write(errorMessage(severity, code, msg))
}

func errorMessage(severity, code, msg string) []byte {
	b, _ := (&pgproto3.ErrorResponse{Severity: severity, SeverityUnlocalized: severity, Code: code, Message: msg}).Encode(nil)
	return b
}

// errCancelHandled ends a connection that carried a CancelRequest.
var errCancelHandled = errors.New("cancel request handled")

// readStartup negotiates SSL/GSS encryption, handles a CancelRequest, and
// returns the raw StartupMessage to forward.
func (s *session) readStartup() ([]byte, error) {
	for {
		var hdr [4]byte
		if _, err := io.ReadFull(s.client, hdr[:]); err != nil {
			return nil, err
		}
		n := int(binary.BigEndian.Uint32(hdr[:]))
		if n < 8 || n > maxStartupPacket {
			return nil, &clientError{code: codeProtocolViolation, msg: fmt.Sprintf("pgveil: invalid startup packet length %d", n)}
		}
		pkt := make([]byte, n)
		copy(pkt, hdr[:])
		if _, err := io.ReadFull(s.client, pkt[4:]); err != nil {
			return nil, err
		}
		code := binary.BigEndian.Uint32(pkt[4:8])
		switch {
		case code == sslRequestCode:
			if s.clientTLS {
				return nil, &clientError{code: codeProtocolViolation, msg: "pgveil: SSLRequest after TLS was established"}
			}
			if s.srv.cfg.TLS == nil {
				if _, err := s.client.Write([]byte{'N'}); err != nil {
					return nil, err
				}
				continue
			}
			if _, err := s.client.Write([]byte{'S'}); err != nil {
				return nil, err
			}
			tc := tls.Server(s.client, s.srv.cfg.TLS)
			if err := tc.Handshake(); err != nil {
				return nil, fmt.Errorf("client TLS handshake: %w", err)
			}
			s.client = tc
			s.clientTLS = true
		case code == gssEncRequestCode:
			if _, err := s.client.Write([]byte{'N'}); err != nil {
				return nil, err
			}
		case code == cancelRequestCode:
			s.handleCancel(pkt[8:])
			return nil, errCancelHandled
		case code>>16 == 3:
			if err := s.parseStartup(pkt[8:]); err != nil {
				return nil, err
			}
			return pkt, nil
		default:
			return nil, &clientError{code: codeFeatureNotSupported, msg: fmt.Sprintf("pgveil: unsupported frontend protocol %d.%d: server supports 3.0 to 3.x", code>>16, code&0xffff)}
		}
	}
}

// parseStartup reads the StartupMessage parameters the proxy needs.
func (s *session) parseStartup(b []byte) error {
	for len(b) > 1 {
		k, rest, ok := cutNul(b)
		if !ok {
			return &clientError{code: codeProtocolViolation, msg: "pgveil: malformed startup packet"}
		}
		v, rest, ok := cutNul(rest)
		if !ok {
			return &clientError{code: codeProtocolViolation, msg: "pgveil: malformed startup packet"}
		}
		b = rest
		switch k {
		case "user":
			s.user = v
		case "database":
			s.database = v
		case "application_name":
			s.appName = v
		}
	}
	if len(b) != 1 || b[0] != 0 {
		return &clientError{code: codeProtocolViolation, msg: "pgveil: malformed startup packet"}
	}
	if s.user == "" {
		return &clientError{code: codeInvalidAuthSpec, msg: "no PostgreSQL user name specified in startup packet"}
	}
	if s.database == "" {
		s.database = s.user
	}
	return nil
}

func cutNul(b []byte) (string, []byte, bool) {
	for i, c := range b {
		if c == 0 {
			return string(b[:i]), b[i+1:], true
		}
	}
	return "", nil, false
}

// handleCancel forwards a CancelRequest to the server of the session the
// key belongs to. Unknown keys are ignored, as the server does.
func (s *session) handleCancel(key []byte) {
	if len(key) < 8 {
		return
	}
	k := cancelKey{pid: binary.BigEndian.Uint32(key[0:4]), secret: string(key[4:])}
	target := s.srv.lookupCancel(k)
	if target == nil || subtle.ConstantTimeCompare([]byte(target.cancelKey.secret), key[4:]) != 1 {
		s.srv.log.Info("cancel request for an unknown session", "client", s.client.RemoteAddr().String())
		return
	}
	target.sendCancel()
	s.srv.log.Info("cancel request relayed", "session", target.id)
}
