package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
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
}

// Observer receives the proxy's events, for metrics. Its methods are
// called from session goroutines and must be cheap and safe for
// concurrent use.
type Observer interface {
	SessionStarted()
	SessionEnded(outcome string, d time.Duration)
	Refused(rule string)
	UpstreamConnected(d time.Duration, err error)
}

type noObserver struct{}

func (noObserver) SessionStarted()                        {}
func (noObserver) SessionEnded(string, time.Duration)     {}
func (noObserver) Refused(string)                         {}
func (noObserver) UpstreamConnected(time.Duration, error) {}

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
	return &Server{
		cfg:       cfg,
		log:       log,
		listeners: make(map[net.Listener]struct{}),
		sessions:  make(map[*session]struct{}),
		cancels:   make(map[cancelKey]*session),
		cache:     rewrite.NewCache(cfg.PlanCacheSize),
	}, nil
}

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
	return sess
}

func (s *Server) removeSession(sess *session) {
	s.mu.Lock()
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
	s.draining.Store(true)
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
	s.mu.Lock()
	sessions = sessions[:0]
	for sess := range s.sessions {
		sessions = append(sessions, sess)
	}
	s.mu.Unlock()
	for _, sess := range sessions {
		sess.kill(errShutdown)
	}
	<-done
	return ctx.Err()
}
