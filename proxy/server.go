package proxy

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgveil/pgveil/rewrite"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("pgveil: server closed")

// DefaultMaxMessageSize is PostgreSQL's own limit on a protocol message
// (PQ_LARGE_MESSAGE_LIMIT in src/backend/libpq/pqcomm.c: MaxAllocSize - 1).
const DefaultMaxMessageSize = 0x3fffffff - 1

// Config configures a Server.
type Config struct {
	// Upstream is where sessions go; required (see ParseUpstream).
	Upstream Upstream
	// TLS is the certificate configuration offered to clients that send an
	// SSLRequest; nil answers 'N' (no TLS). MinVersion is raised to TLS 1.2.
	TLS *tls.Config
	// TLSRequired refuses clients that do not use TLS; it needs TLS.
	TLSRequired bool
	// MaxMessageSize caps the length of one protocol message in either
	// direction; zero means DefaultMaxMessageSize.
	MaxMessageSize int
	// ConnectTimeout bounds dialling the upstream and its TLS handshake;
	// zero means 10s.
	ConnectTimeout time.Duration
	// StartupTimeout bounds a client's whole handshake, from connect to the
	// first ReadyForQuery; zero means 60s.
	StartupTimeout time.Duration
	// Logger receives one line per session start and end; nil discards.
	Logger *slog.Logger
	// Masking, when set, rewrites the statements of sessions whose roles
	// may not see every class raw. nil relays every session unchanged.
	Masking Masking
	// PlanCacheSize bounds the plan cache; zero means 10,000 plans.
	PlanCacheSize int
	// Observer receives events for metrics; nil means none.
	Observer Observer
	// MaxClientConn caps the sessions relayed at once; a client beyond it
	// gets SQLSTATE 53300. Zero means no limit. Admin console sessions do
	// not count, so an operator can always get in.
	MaxClientConn int
	// IdleTimeout ends a session whose client has sent nothing for this
	// long while no query is running (SQLSTATE 57P05, or 25P03 inside a
	// transaction). Zero means never.
	IdleTimeout time.Duration
	// AdminDatabase is the database name that reaches the admin console
	// instead of the upstream; empty disables the console. AdminUsers are
	// the login names allowed in (others get 42501); the upstream still
	// authenticates them, against AdminAuthDatabase (default "postgres").
	AdminDatabase     string
	AdminUsers        []string
	AdminAuthDatabase string
	// Statements, when set with Masking, receives one event per statement
	// of every session (raw ones included), for the usage ledger and the
	// audit log.
	Statements StatementSink
	// Keys encrypts and decrypts the values of encrypted columns (see
	// KeyService); nil refuses statements that need it. KeyTimeout bounds
	// one call; zero means 10s.
	Keys       KeyService
	KeyTimeout time.Duration
	// DecryptBatch is how many DataRows are held and decrypted together
	// (one key-service call per column per batch); zero means 1000.
	DecryptBatch int
	// Console serves the console commands that reach beyond the proxy
	// (RELOAD, SHUTDOWN, SHOW POLICY, SHOW USAGE); nil answers them with
	// an error.
	Console Console
	// IOUring relays sessions that pass unchanged over plain sockets on
	// an io_uring event loop once they are idle (uring.go); New fails
	// when io_uring cannot be used here.
	IOUring bool
}

// Observer receives the proxy's events, for metrics. Its methods are
// called from session goroutines and must be cheap and safe for
// concurrent use.
type Observer interface {
	SessionStarted()
	SessionEnded(outcome string, d time.Duration)
	Refused(rule string)
	UpstreamConnected(d time.Duration, err error)
	// QueryDone is called at the ReadyForQuery that answers a sync point
	// (a Query, a Sync, a FunctionCall), with its outcome (ok, error,
	// refused). d is the round trip from the oldest unanswered sync point
	// to this ReadyForQuery when it leaves the session idle, and negative
	// for the earlier answers of a pipeline.
	QueryDone(outcome string, d time.Duration)
	// Rejected counts a client turned away before its session started,
	// by reason (max_client_conn).
	Rejected(reason string)
	// Rewritten counts a statement text sent to the server rewritten.
	Rewritten()
}

type noObserver struct{}

func (noObserver) SessionStarted()                        {}
func (noObserver) SessionEnded(string, time.Duration)     {}
func (noObserver) Refused(string)                         {}
func (noObserver) UpstreamConnected(time.Duration, error) {}
func (noObserver) QueryDone(string, time.Duration)        {}
func (noObserver) Rejected(string)                        {}
func (noObserver) Rewritten()                             {}

// Server accepts client connections and relays each to its own upstream
// server connection.
type Server struct {
	cfg Config
	log *slog.Logger

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	sessions  map[*session]struct{}
	cancels   map[cancelKey]*session
	done      chan struct{} // closed when the last session ends during shutdown

	draining atomic.Bool
	nextID   atomic.Uint64
	wg       sync.WaitGroup
	cache    *rewrite.Cache
	facts    *factsCache

	// admitted counts the sessions that count against MaxClientConn.
	admitted atomic.Int64
	// closedIn, closedOut and closedQueries hold the totals of ended
	// sessions (under mu, with sessions, so Stats never counts twice).
	closedIn, closedOut, closedQueries int64
	janitorOnce, proberOnce            sync.Once
	stopJanitor                        chan struct{}
	// ring is the io_uring event loop (Config.IOUring), or nil.
	ring *ringLoop
}

// cancelKey identifies a session to CancelRequest: the process id of its
// server backend and the proxy's own secret.
type cancelKey struct {
	pid    uint32
	secret string
}

// New validates cfg and returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Upstream.Address == "" {
		return nil, errors.New("missing upstream")
	}
	if cfg.Upstream.TLS == nil && cfg.Upstream.wantsTLS() {
		return nil, errors.New("upstream TLS configuration missing (use ParseUpstream)")
	}
	if cfg.TLSRequired && cfg.TLS == nil {
		return nil, errors.New("TLS required but no certificate configured")
	}
	if cfg.TLS != nil {
		cfg.TLS = cfg.TLS.Clone()
		if cfg.TLS.MinVersion < tls.VersionTLS12 {
			cfg.TLS.MinVersion = tls.VersionTLS12
		}
	}
	if cfg.MaxMessageSize <= 0 {
		cfg.MaxMessageSize = DefaultMaxMessageSize
	}
	if cfg.MaxMessageSize < 1<<16 {
		return nil, fmt.Errorf("max message size %d is below 64 KiB", cfg.MaxMessageSize)
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if cfg.StartupTimeout <= 0 {
		cfg.StartupTimeout = 60 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Observer == nil {
		cfg.Observer = noObserver{}
	}
	if cfg.MaxClientConn < 0 || cfg.IdleTimeout < 0 {
		return nil, errors.New("max client connections and idle timeout must not be negative")
	}
	if cfg.KeyTimeout <= 0 {
		cfg.KeyTimeout = 10 * time.Second
	}
	if cfg.DecryptBatch <= 0 {
		cfg.DecryptBatch = 1000
	}
	if cfg.AdminDatabase != "" && cfg.AdminAuthDatabase == "" {
		cfg.AdminAuthDatabase = "postgres"
	}
	var ring *ringLoop
	if cfg.IOUring {
		var err error
		if ring, err = sharedRing(); err != nil {
			return nil, fmt.Errorf("io_uring relay: %w", err)
		}
	}
	return &Server{
		ring:      ring,
		cfg:       cfg,
		log:       log,
		listeners: make(map[net.Listener]struct{}),
		sessions:  make(map[*session]struct{}),
		cancels:   make(map[cancelKey]*session),
		cache:     rewrite.NewCache(cfg.PlanCacheSize),
		facts:     newFactsCache(10000),

		stopJanitor: make(chan struct{}),
	}, nil
}

// IOUring reports whether idle pass-through sessions go to the io_uring
// relay (Config.IOUring).
func (s *Server) IOUring() bool { return s.ring != nil && !s.ring.failed.Load() }

// Serve accepts connections on ln until Shutdown; it returns ErrServerClosed
// after Shutdown and another error if accepting fails.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.draining.Load() {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if s.draining.Load() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, errTooManyFiles) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("accept", "err", err, "retry_in", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		backoff = 0
		sess := s.newSession(conn)
		if sess == nil {
			conn.Close()
			continue
		}
		go sess.serve()
	}
}

// ServeConn runs one client connection to its end, as Serve does for each
// accepted connection.
func (s *Server) ServeConn(conn net.Conn) {
	sess := s.newSession(conn)
	if sess == nil {
		conn.Close()
		return
	}
	sess.serve()
}

// ListenAndServe listens on addr (TCP) and calls Serve.
func (s *Server) ListenAndServe(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	return s.Serve(ln)
}

func (s *Server) newSession(conn net.Conn) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining.Load() {
		return nil
	}
	sess := newSession(s, conn, s.nextID.Add(1))
	s.sessions[sess] = struct{}{}
	s.wg.Add(1)
	if s.cfg.IdleTimeout > 0 {
		s.janitorOnce.Do(func() { go s.janitor() })
	}
	s.proberOnce.Do(func() { go s.restProber() })
	return sess
}

func (s *Server) removeSession(sess *session) {
	s.mu.Lock()
	if sess.admitted {
		s.admitted.Add(-1)
	}
	s.closedIn += sess.bytesIn.Load()
	s.closedOut += sess.bytesOut.Load()
	s.closedQueries += sess.queries.Load()
	delete(s.sessions, sess)
	if sess.cancelKey.secret != "" {
		delete(s.cancels, sess.cancelKey)
	}
	s.mu.Unlock()
	s.wg.Done()
}

func (s *Server) registerCancel(sess *session, key cancelKey) {
	s.mu.Lock()
	s.cancels[key] = sess
	s.mu.Unlock()
}

func (s *Server) lookupCancel(key cancelKey) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cancels[key]
}

// Draining reports whether Shutdown has begun.
func (s *Server) Draining() bool { return s.draining.Load() }

// Ready reports why the proxy cannot serve new sessions, or nil: it is not
// shutting down, the catalog is loaded when a policy is configured, and the
// upstream accepts TCP connections.
func (s *Server) Ready(ctx context.Context) error {
	if s.draining.Load() {
		return errors.New("shutting down")
	}
	if s.cfg.Masking != nil {
		if _, snap := s.cfg.Masking.Current(); snap == nil {
			return errors.New("catalog not loaded")
		}
	}
	var d net.Dialer
	dial := s.cfg.Upstream.Dial
	if dial == nil {
		dial = d.DialContext
	}
	conn, err := dial(ctx, s.cfg.Upstream.Network, s.cfg.Upstream.Address)
	if err != nil {
		return fmt.Errorf("upstream unreachable: %w", err)
	}
	return conn.Close()
}

// Sessions returns the number of open sessions.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// Shutdown stops accepting, ends each session as soon as it is idle outside
// a transaction, and waits for the rest to finish. When ctx ends first, the
// remaining sessions are ended with SQLSTATE 57P01; Shutdown then waits for
// them to close and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.draining.Swap(true) {
		close(s.stopJanitor)
	}
	for ln := range s.listeners {
		ln.Close()
	}
	sessions := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		sessions = append(sessions, sess)
	}
	s.mu.Unlock()
	for _, sess := range sessions {
		sess.endIfIdle()
	}
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	sessions = s.appendSessions(sessions[:0])
	for _, sess := range sessions {
		sess.kill(errShutdown)
	}
	<-done
	return ctx.Err()
}

// admit counts sess against MaxClientConn, or reports that the limit is
// reached.
func (s *Server) admit(sess *session) bool {
	if s.cfg.MaxClientConn == 0 {
		return true
	}
	if s.admitted.Add(1) > int64(s.cfg.MaxClientConn) {
		s.admitted.Add(-1)
		return false
	}
	sess.admitted = true
	return true
}

// isAdmin reports whether user may use the admin console.
func (s *Server) isAdmin(user string) bool {
	for _, u := range s.cfg.AdminUsers {
		if u == user {
			return true
		}
	}
	return false
}

// appendSessions appends the open sessions to list, for the periodic
// checks that must not hold s.mu while they look at each one.
func (s *Server) appendSessions(list []*session) []*session {
	s.mu.Lock()
	defer s.mu.Unlock()
	for sess := range s.sessions {
		list = append(list, sess)
	}
	return list
}

// janitor ends sessions idle for longer than IdleTimeout. A session is
// idle when no sync point is unanswered and its client has sent no byte
// since the last check; checking a few times per timeout keeps the hot
// path free of timers.
func (s *Server) janitor() {
	timeout := s.cfg.IdleTimeout
	period := min(max(timeout/4, 50*time.Millisecond), 5*time.Second)
	t := time.NewTicker(period)
	defer t.Stop()
	var list []*session
	for {
		select {
		case <-s.stopJanitor:
			return
		case now := <-t.C:
			list = s.appendSessions(list[:0])
			for _, sess := range list {
				sess.checkIdle(now, timeout)
			}
		}
	}
}

// restProbe is what the rest prober remembers of one pump.
type restProbe struct {
	seq    uint64
	probed bool
}

// restPeriod is how often the rest prober looks at the pumps: a peer that
// closed its connection together with its last message is noticed within
// about two periods.
const restPeriod = 250 * time.Millisecond

// restProber peeks once at every pump that has been at rest for a whole
// period without seeing EAGAIN (pump.runRaw), to find a FIN or reset that
// came with the peer's last message.
func (s *Server) restProber() {
	t := time.NewTicker(restPeriod)
	defer t.Stop()
	var list []*session
	for {
		select {
		case <-s.stopJanitor:
			return
		case <-t.C:
			list = s.appendSessions(list[:0])
			for _, sess := range list {
				for i, p := range [2]*pump{sess.up.Load(), sess.down.Load()} {
					if p == nil {
						continue
					}
					st := &sess.probed[i]
					switch seq := p.restSeq.Load(); {
					case seq&1 == 0 || seq != st.seq:
						st.seq, st.probed = seq, false
					case !st.probed:
						st.probed = true
						p.probeRest()
					}
				}
			}
		}
	}
}

// checkIdle is the janitor's look at one session.
func (s *session) checkIdle(now time.Time, timeout time.Duration) {
	if !s.ready.Load() || s.pending.Load() != 0 {
		s.idleSince = time.Time{}
		return
	}
	b := s.bytesIn.Load()
	if s.idleSince.IsZero() || b != s.idleBytes {
		s.idleBytes, s.idleSince = b, now
		return
	}
	if now.Sub(s.idleSince) < timeout {
		return
	}
	err := &clientError{code: codeIdleSessionTimeout, msg: "terminating connection due to idle-session timeout (pgveil --idle-timeout)", kind: "idle_timeout"}
	if st := byte(s.txStatus.Load()); st == 'T' || st == 'E' {
		err = &clientError{code: codeIdleInTxTimeout, msg: "terminating connection due to idle-in-transaction timeout (pgveil --idle-timeout)", kind: "idle_timeout"}
	}
	s.srv.log.Info("idle timeout", "session", s.id, "idle", now.Sub(s.idleSince).Round(time.Millisecond))
	s.end(err)
}

// Stats are the proxy's running totals.
type Stats struct {
	// Sessions is the number of open sessions (console ones included).
	Sessions int
	// ClientBytes and ServerBytes are the bytes read from clients and from
	// servers, by open and ended sessions.
	ClientBytes, ServerBytes int64
	// Queries counts answered sync points.
	Queries int64
	// PlanCacheHits and PlanCacheMisses count rewrite plan lookups;
	// PlanTemplateHits are the hits a statement template answered (a text
	// seen for the first time whose shape was known; rewrite/template.go).
	PlanCacheHits, PlanCacheMisses, PlanTemplateHits uint64
	// RingUp says the io_uring relay is in use (Config.IOUring, and its
	// loop has not failed); RingSessions counts the sessions it carries.
	RingUp       bool
	RingSessions int
}

// Stats returns the running totals.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	st := Stats{Sessions: len(s.sessions), ClientBytes: s.closedIn, ServerBytes: s.closedOut, Queries: s.closedQueries}
	for sess := range s.sessions {
		st.ClientBytes += sess.bytesIn.Load()
		st.ServerBytes += sess.bytesOut.Load()
		st.Queries += sess.queries.Load()
		if sess.ringActive.Load() {
			st.RingSessions++
		}
	}
	s.mu.Unlock()
	st.RingUp = s.IOUring()
	st.PlanCacheHits, st.PlanCacheMisses = s.cache.Stats()
	st.PlanTemplateHits = s.cache.ShapeHits()
	return st
}

// SessionInfo describes one open session (SHOW SESSIONS).
type SessionInfo struct {
	ID                      uint64
	User, Database, AppName string
	Client                  string
	ClientTLS, ServerTLS    bool
	// Mode is relay, masked or console; State is startup, idle, active,
	// idle in transaction or idle in failed transaction.
	Mode, State       string
	Started           time.Time
	BytesIn, BytesOut int64
	Queries           int64
}

// SessionList returns the open sessions, oldest first.
func (s *Server) SessionList() []SessionInfo {
	list := s.appendSessions(nil)
	out := make([]SessionInfo, 0, len(list))
	for _, sess := range list {
		out = append(out, sess.info())
	}
	slices.SortFunc(out, func(a, b SessionInfo) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

func (s *session) info() SessionInfo {
	in := SessionInfo{ID: s.id, Client: s.clientAddr, Started: s.start, State: "startup", Mode: "relay",
		BytesIn: s.bytesIn.Load(), BytesOut: s.bytesOut.Load(), Queries: s.queries.Load()}
	if !s.started.Load() {
		return in
	}
	in.User, in.Database, in.AppName, in.ClientTLS = s.user, s.database, s.appName, s.clientTLS
	if !s.ready.Load() {
		return in
	}
	in.ServerTLS = s.serverTLS
	switch {
	case s.console:
		in.Mode = "console"
	case s.masked.Load() != nil:
		in.Mode = "masked"
	}
	switch st := byte(s.txStatus.Load()); {
	case s.pending.Load() > 0:
		in.State = "active"
	case st == 'T':
		in.State = "idle in transaction"
	case st == 'E':
		in.State = "idle in failed transaction"
	default:
		in.State = "idle"
	}
	return in
}

// Revalidate re-decides, under the current policy, every session that was
// relayed unchanged because its roles saw everything raw. A session whose
// roles may no longer see everything raw is ended (SQLSTATE 57P01): it
// would otherwise keep reading what the new policy masks. Masked sessions
// pick up a new policy at their next statement. It returns the number of
// sessions ended.
func (s *Server) Revalidate() int {
	mk := s.cfg.Masking
	if mk == nil {
		return 0
	}
	policy, snap := mk.Current()
	if policy == nil || snap == nil {
		return 0
	}
	list := s.appendSessions(nil)
	n := 0
	for _, sess := range list {
		if sess.console || !sess.ready.Load() || sess.masked.Load() != nil || snap.Database != sess.database {
			continue
		}
		g, err := policy.Grants(snap.RolesOf(sess.user))
		if err == nil && g.AllRaw() && !policy.HasEncrypted() {
			continue
		}
		s.log.Info("session ended: the new policy masks what it reads", "session", sess.id, "user", sess.user)
		sess.end(&clientError{code: codeAdminShutdown, msg: "pgveil: the policy changed and this session may no longer see every column raw; reconnect", kind: "policy_changed"})
		n++
	}
	return n
}
