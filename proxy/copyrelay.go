package proxy

import (
	"sync"
	"sync/atomic"
)

// A relayed (not masked) session counts its client's sync points too
// (session.pending: whether the session is idle, for the io_uring loop,
// shutdown and the query metrics; the statement tracker's queue: which
// statement an answer belongs to). PostgreSQL ignores a Sync it reads
// during COPY FROM STDIN, and a client running COPY with the extended
// protocol sends one right after the Execute, before the data (libpq,
// rust-postgres): counted, it would never be answered, leaving the
// session busy for good and every later statement of a tracked session
// paired with the answer of the one before. The masked path keeps exact
// books with the statement's plan (copysync.go); a relayed session has no
// plan, so it follows the server instead:
//
//   - the client side notes the sync count when it sends a Query or an
//     Execute (either may start a COPY);
//   - when the server answers CopyInResponse, the Syncs counted since are
//     the ones it reads (and ignores) in COPY mode, and Syncs the client
//     sends from then on are not counted;
//   - when the COPY ends (the client's CopyDone or CopyFail, or the
//     server's ErrorResponse or CommandComplete, whichever comes first),
//     the ignored Syncs are taken off the count and the tracker's queue.
//
// The messages themselves pass unchanged. Two cases stay ambiguous: a
// COPY that fails after CopyInResponse but before the server read the
// Sync (a statement-level trigger, say) answers that Sync; and a client
// that streams its data and CopyDone without waiting for CopyInResponse
// (libpq, rust-postgres, pgx and JDBC all wait) has its next Sync
// counted late. Either way the count reaches zero one ReadyForQuery early
// and stays at zero (syncDone does not let it go negative), and the
// tracker's queue is already empty when that answer comes.
type plainCopy struct {
	// mark is syncsSent when the client last sent a Query or an Execute.
	mark atomic.Uint64
	// in says the server is in COPY FROM STDIN; mu guards it (in is
	// also read without the lock by the server side's message classes)
	// and ignored, the Syncs counted since mark when the COPY started.
	mu      sync.Mutex
	in      atomic.Bool
	ignored uint64
}

// plainSync counts a relayed session's Sync (client side), with the
// tracker's sync point, unless the server is in COPY FROM STDIN.
func (s *session) plainSync() {
	s.pcopy.mu.Lock()
	defer s.pcopy.mu.Unlock()
	if s.pcopy.in.Load() {
		return
	}
	if s.track != nil {
		s.track.syncPoint(false)
	}
	s.syncSent()
}

// plainCopyStarted handles the server's CopyInResponse in a relayed
// session.
func (s *session) plainCopyStarted() {
	s.pcopy.mu.Lock()
	defer s.pcopy.mu.Unlock()
	if s.pcopy.in.Load() {
		return
	}
	s.pcopy.in.Store(true)
	if sent, mark := s.syncsSent.Load(), s.pcopy.mark.Load(); sent > mark {
		s.pcopy.ignored = sent - mark
	}
}

// plainCopyEnded handles the end of a relayed session's COPY FROM STDIN
// (client side: CopyDone, CopyFail; server side: ErrorResponse,
// CommandComplete): the Syncs the server ignored are taken off the
// count.
func (s *session) plainCopyEnded() {
	if !s.pcopy.in.Load() {
		// No COPY (the common case: every CommandComplete of a tracked
		// session comes here). in is set on the server side, and the
		// client side sees its CopyDone only after the client read the
		// CopyInResponse, which the server side relays after setting it.
		return
	}
	s.pcopy.mu.Lock()
	defer s.pcopy.mu.Unlock()
	if !s.pcopy.in.Load() {
		return
	}
	s.pcopy.in.Store(false)
	n := s.pcopy.ignored
	s.pcopy.ignored = 0
	if n == 0 {
		return
	}
	s.syncsSent.Add(-n)
	if p := s.pending.Add(-int64(n)); p < 0 {
		s.pending.Store(0)
	}
	if s.track != nil {
		s.track.dropTrailingSyncs(int(n))
	}
}
