package proxy

import (
	"bytes"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/pgveil/pgveil/catalog"
	"github.com/pgveil/pgveil/rewrite"
	"github.com/pgveil/pgveil/rules"
)

// StatementSink receives one event per statement a session ran, for the
// usage ledger and the audit log. Statement is called on the session's
// server-side goroutine or, while the io_uring loop relays the session,
// on the goroutine of the loop's handoff (never on two at once for one
// session), in the order the statements ran; it must not block, and must
// copy whatever it keeps: the event is reused.
type StatementSink interface {
	Statement(ev *StatementEvent)
}

// SessionSinker is a StatementSink that keeps state per session (what is
// the same for all of a session's statements, converted once). The
// tracker of each session calls SessionSink once, when the session's mode
// is decided, with an event that holds the session's fields (Session,
// User, Database, Application, ClientIP, Roles), and sends that session's
// statements to the sink it returns instead. The returned sink is called
// from the session's server-side goroutine only, and is dropped with the
// session.
type SessionSinker interface {
	StatementSink
	SessionSink(base *StatementEvent) StatementSink
}

// SessionEnder is implemented by a sink SessionSink returns that wants to
// know when its session ends: the tracker calls End once, after the
// session's last Statement.
type SessionEnder interface {
	End()
}

// BlockingSink is implemented by a sink that may wait for room (the
// audit log's block policy) and says so. The io_uring loop hands such a
// sink its sessions' events itself, as their goroutines do, instead of
// through its handoff: a session then waits at the statement the sink
// cannot take, rather than the loop relaying more statements than the
// sink has taken.
type BlockingSink interface {
	Blocks() bool
}

// RanSink is a sink (a StatementSink, or one that SessionSink returns)
// with a short way for the common case: a statement that succeeded and
// whose Memo the sink has already filled. The tracker calls Ran for such
// a statement, without building an event; when Ran returns false it has
// recorded nothing, and the tracker calls Statement with the whole event.
// Ran is called like Statement.
type RanSink interface {
	Ran(m *Memo, start time.Time, d time.Duration, rows int64) bool
}

// Memo holds a sink's own form of one analysed statement: all events of
// the same tracked statement (a relayed text shape shared by every session
// with the same context, a prepared statement, a cached plan) carry the
// same Memo, so a sink can convert what it needs once and keep it there.
// It is safe for concurrent use; the tracker never looks inside.
type Memo struct{ v atomic.Value }

// Load returns what Store stored, or nil.
func (m *Memo) Load() any { return m.v.Load() }

// Store keeps v; every call must store the same concrete type.
func (m *Memo) Store(v any) { m.v.Store(v) }

// StatementEvent describes one statement and its outcome.
type StatementEvent struct {
	Session                               uint64
	User, Database, Application, ClientIP string
	// Roles are the session's roles: the login user and, recursively, the
	// roles it is a member of.
	Roles []string
	// Start is when the statement was sent to the server; Duration runs
	// until its answer.
	Start    time.Time
	Duration time.Duration
	// Normalized is the client's text with every literal replaced by "?"
	// (the whole text for a multi-statement simple query); "" when the
	// text could not be scanned. Kind is the statement's node type
	// (SelectStmt, ...), "" when unknown.
	Normalized  string
	Fingerprint string
	Kind        string
	// Uses are the base columns the statement touched, with the clause
	// kinds and the session's treatment; nil when unknown.
	Uses []rewrite.ColumnUse
	// Rows is the row count of the command tag (SELECT n, INSERT 0 n,
	// COPY n, ...), or the rows of a suspended portal.
	Rows int64
	// Outcome is ok, error or refused; SQLState is the error's code and
	// Rule the refusal's rule.
	Outcome, SQLState, Rule string
	// Memo is the sink's memo of the statement (see Memo); nil when the
	// statement is unknown.
	Memo *Memo
	// Loop says the session is one the io_uring loop relays (from its
	// first idle moment on): its statements come from the loop's thread,
	// which relays many sessions one message at a time, so a sink may
	// keep their statements together. It is the same for all of a
	// session's events.
	Loop bool
}

// trackedStmt is what the tracker knows of one statement before it runs.
// What every run reads (memo, refusal, transforms) comes first, in the
// cache line the relay thread loads.
type trackedStmt struct {
	memo        Memo // the sink's, see Memo
	refusal     *rewrite.Refusal
	transforms  bool // some result column needs a transform (outputs)
	ctx         bool // it changes the search_path or the role (follow)
	indirect    bool // an SQL EXECUTE or a FETCH (executed)
	syntax      bool
	st          *rewrite.Statement // nil when not analysed
	normalized  string
	fingerprint string
}

// movesContext reports whether st changes the session's name-resolution
// context (search_path or role), which a relayed session's tracker
// follows.
func movesContext(st *rewrite.Statement) bool {
	return st.SearchPath != nil || st.ResetSearchPath || st.Role != "" || st.ResetRole
}

// isIndirect reports whether st runs or reads another statement (an SQL
// EXECUTE or a FETCH), whose uses or rows it records (executed).
func isIndirect(st *rewrite.Statement) bool { return st.Executes != "" || st.Fetches != "" }

// newTracked returns the tracked statement for st.
func newTracked(st *rewrite.Statement, norm, fp string) *trackedStmt {
	ts := &trackedStmt{st: st, normalized: norm, fingerprint: fp, ctx: st != nil && movesContext(st), indirect: st != nil && isIndirect(st)}
	if st != nil && st.OutputsKnown {
		for _, o := range st.Outputs {
			if o.Transform != rewrite.TransformNone {
				ts.transforms = true
				break
			}
		}
	}
	return ts
}

// pending is a statement sent to the server and not yet answered, or
// (ts == syncMark) the marker of a sync point. It is 32 bytes, so that the
// usual queue (a statement and its sync point) is one cache line.
type pending struct {
	ts      *trackedStmt
	wall    int64 // start, in nanoseconds since 1970
	mono    int64 // start in the session's clock (session.stamp)
	maxRows int64
}

// syncMark is the ts of a sync point's pending.
var syncMark = &trackedStmt{}

// syncPending is the pending of a sync point.
var syncPending = pending{ts: syncMark}

// isSync reports whether p marks a sync point.
func (p *pending) isSync() bool { return p.ts == syncMark }

// outputs returns the result columns of p when some need a transform.
func (p *pending) outputs() []rewrite.Output {
	if p.ts == nil || !p.ts.transforms { // syncMark has none
		return nil
	}
	return p.ts.st.Outputs
}

// headStatement returns the statement being answered, or nil.
func (t *tracker) headStatement() *rewrite.Statement {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.qh == len(t.queue) || t.queue[t.qh].isSync() || t.queue[t.qh].ts == nil {
		return nil
	}
	return t.queue[t.qh].ts.st
}

// headOutputs returns the transformed outputs of the statement being
// answered, or nil.
func (t *tracker) headOutputs() []rewrite.Output {
	if t.transforms.Load() == 0 {
		return nil // no statement sent and not yet answered has any
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.qh == len(t.queue) || t.queue[t.qh].isSync() {
		return nil
	}
	return t.queue[t.qh].outputs()
}

// tracker follows the statements of a session to their outcome and hands
// each to the StatementSink. The client side registers what it sends;
// the server side matches the answers (CommandComplete, ErrorResponse,
// EmptyQueryResponse, PortalSuspended, ReadyForQuery) in order.
type tracker struct {
	// The fields every statement of a relayed session uses come first,
	// in the first three cache lines (the relay thread serves many
	// sessions in turn, so each line it touches is usually a miss):
	// these, ...
	s *session
	// hand is the io_uring loop's handoff while the loop relays the
	// session (set with inLoop, when the session has a sink that does
	// not block): its statements' events go through it (emit).
	hand *handoff
	// inLoop mirrors session.ringActive for lock, in a cache line the
	// tracker touches anyway: it is written only while neither of the
	// session's pumps runs (session.enterRing, ringReturn), and read by
	// the side that runs.
	inLoop bool
	// queue holds the statements sent and not yet answered, from
	// queue[qh] (the client side appends, the server side consumes),
	// guarded by mu (see lock).
	qh    int
	queue []pending

	// ... these, ...: unnamed is the unnamed portal's statement (most
	// clients bind only that one), and bound the statement last found by
	// name for a Bind (boundOK says it is set): a client binding the same
	// prepared statement again skips both map lookups. Its name is
	// boundShort[:boundLen] when it has up to shortName bytes (pgbench's,
	// JDBC's, psycopg's), boundLong otherwise. epochWall and epochMono are
	// the epoch of now.
	unnamed    *trackedStmt
	bound      *trackedStmt
	epochWall  int64 // nanoseconds since 1970
	epochMono  int64 // epoch in the session's clock
	boundOK    bool
	boundLen   uint8
	boundShort [shortName]byte
	boundLong  []byte

	// ... and these.
	sink   StatementSink
	ran    RanSink // sink's short way, if it has one
	masked bool
	blocks bool // the sink may wait (BlockingSink): no handoff

	// What a relayed simple query's facts-cache lookup reads when the text
	// has the shape of the last one, in two cache lines. ctxVersion
	// counts changes of path and user (written under mu, read without
	// it); the facts-cache key prefix is rebuilt when it, the policy or
	// the snapshot changes. The prefix fields, with the path and user it
	// was built from, are the client side's. lastKey and lastStmts
	// remember the session's last facts-cache entry: applications repeat
	// a few statement shapes, and a hit here skips the shared cache's
	// lock and hashing. lastRaw is the text that entry was looked up
	// for, lastLits its literals and lastScs its
	// standard_conforming_strings: a text that differs from it only in
	// those literals has the same entry (rewrite.SameShape), found
	// without normalizing the text.
	ctxVersion  atomic.Uint64
	prefixValid bool
	lastScs     bool
	lastRawOK   bool          // lastRaw holds the text (not kept beyond maxShapeMemo)
	prefixPol   *rules.Policy // the policy and snapshot the prefix is for
	prefixSnap  *catalog.Snapshot
	prefixCtxV  uint64
	lastStmts   []*trackedStmt
	lastRaw     []byte
	lastLits    []rewrite.Literal
	lastKey     []byte
	prefix      []byte
	prefixPath  []string
	prefixUser  string

	grants  *rules.Grants
	base    StatementEvent
	scratch []byte
	ev      StatementEvent

	// The maps belong to the client-side goroutine.
	stmts   map[string]*trackedStmt // protocol-level prepared statements
	portals map[string]*trackedStmt // named portals
	sqlPrep map[string]*trackedStmt // SQL PREPARE, for EXECUTE
	cursors map[string]*trackedStmt // DECLARE, for FETCH

	// mu guards what both goroutines use: the queue (above) and the
	// name-resolution context below.
	mu sync.Mutex
	// path and user are the name-resolution context of a relayed
	// (unmasked) session: read at its start, then followed through the
	// SET search_path and SET ROLE statements the analysis sees.
	path []string
	user string
	// transforms counts the queued statements that have transforms
	// (trackedStmt.transforms): without any, the server side needs no
	// lock to know that the statement it answers has none.
	transforms atomic.Int64
	// lits is the scratch of the facts-cache lookup's scan.
	lits rewrite.LiteralScan
}

// maxBoundName is the longest statement name tracker.bound remembers,
// and shortName the longest it keeps in the tracker's hot lines.
const (
	maxBoundName = 256
	shortName    = 24
)

// planTracked is what a plan's Memo holds: the plan's tracked statements,
// for texts normalized with standard_conforming_strings scs.
type planTracked struct {
	scs   bool
	stmts []*trackedStmt
}

// maxShapeMemo is the longest text a tracker keeps to recognise the next
// one by (tracker.lastRaw): a session's bulk statement is not held on to.
const maxShapeMemo = 8 << 10

func newTracker(s *session, sink StatementSink, roles []string, grants *rules.Grants, masked bool) *tracker {
	host := s.clientAddr
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	t := &tracker{s: s, sink: sink, masked: masked, grants: grants, user: s.user,
		base: StatementEvent{Session: s.id, User: s.user, Database: s.database, Application: s.appName, ClientIP: host, Roles: roles,
			Loop: !masked && s.srv != nil && s.srv.IOUring() && !s.clientTLS && !s.serverTLS},
		stmts: map[string]*trackedStmt{}, portals: map[string]*trackedStmt{}, sqlPrep: map[string]*trackedStmt{}, cursors: map[string]*trackedStmt{}}
	t.ev = t.base
	epoch := time.Now()
	t.epochWall, t.epochMono = epoch.UnixNano(), int64(epoch.Sub(s.start))
	if b, ok := sink.(BlockingSink); ok {
		t.blocks = b.Blocks()
	}
	if ss, ok := sink.(SessionSinker); ok {
		base := t.base
		t.sink = ss.SessionSink(&base)
	}
	t.ran, _ = t.sink.(RanSink)
	return t
}

// now returns the time a statement starts, in nanoseconds since 1970 and
// in the session's clock (session.stamp, which the busy-time metric
// shares): the wall clock of the epoch plus the session's clock since, so
// a statement reads no clock of its own. The epoch is renewed every
// minute, so that a step of the system clock shows in the statements'
// times within a minute. It is the client side's.
func (t *tracker) now() (int64, int64) {
	m := t.s.stamp(0)
	d := m - t.epochMono
	if d > int64(time.Minute) || d < 0 {
		epoch := time.Now()
		t.epochWall, t.epochMono = epoch.UnixNano(), int64(epoch.Sub(t.s.start))
		return t.epochWall, t.epochMono
	}
	return t.epochWall + d, m
}

// end tells a per-session sink that the session is over.
func (t *tracker) end() {
	if e, ok := t.sink.(SessionEnder); ok {
		e.End()
	}
}

// setContext records the session's search_path and current user.
func (t *tracker) setContext(path []string, user string) {
	t.mu.Lock()
	t.path, t.user = path, user
	t.ctxVersion.Add(1)
	t.mu.Unlock()
}

// normalize returns the normalized text of sql.
func (t *tracker) normalize(sql string) (string, bool) {
	var ok bool
	t.scratch, ok = normalizeSQL(t.scratch[:0], sql, !t.s.scsOff.Load())
	var norm string
	if ok {
		norm = string(t.scratch)
	}
	if cap(t.scratch) > maxShapeMemo {
		t.scratch = nil // a long text's: not kept for the session's life
	}
	return norm, ok
}

// analyse returns the statements of sql as the tracker records them: from
// plan (a masked session's rewrite) or, for a relayed session, from the
// shared facts cache keyed by the normalized text.
func (t *tracker) analyse(sql string, plan *rewrite.Plan, refusal error) []*trackedStmt {
	if refusal != nil {
		// A refused text still names the columns it tried to reach: the
		// plain analysis finds them, and they are recorded as refused.
		facts := t.s.srv.facts.lookup(t, sql)
		out := stmtsOf(nil, refusal, "")
		ts := trackedStmt{refusal: out[0].refusal, syntax: out[0].syntax}
		if len(facts) > 0 {
			ts.normalized, ts.fingerprint = facts[0].normalized, facts[0].fingerprint
			for _, f := range facts {
				if f.st != nil {
					st := *f.st
					if ts.st != nil {
						st.Uses = append(append([]rewrite.ColumnUse(nil), ts.st.Uses...), f.st.Uses...)
					}
					ts.st = &st
					ts.ctx, ts.indirect = movesContext(&st), isIndirect(&st)
				}
			}
		}
		return []*trackedStmt{&ts}
	}
	if t.masked || plan != nil {
		// A plan belongs to one text, or (a statement template's) to one
		// literal-free shape, so its normalized text is the same each
		// time (for one standard_conforming_strings): its tracked
		// statements are made once and kept with the plan, for all the
		// sessions that share it.
		scs := !t.s.scsOff.Load()
		if plan != nil {
			if pt, _ := plan.Memo.Load().(*planTracked); pt != nil && pt.scs == scs {
				return pt.stmts
			}
		}
		norm, _ := t.normalize(sql)
		stmts := stmtsOf(plan, nil, norm)
		if plan != nil {
			plan.Memo.Store(&planTracked{scs: scs, stmts: stmts})
		}
		return stmts
	}
	return t.s.srv.facts.lookup(t, sql)
}

// stmtsOf turns a plan (or a refusal) into tracked statements.
func stmtsOf(plan *rewrite.Plan, refusal error, norm string) []*trackedStmt {
	if refusal != nil {
		ts := &trackedStmt{normalized: norm, fingerprint: fingerprint(norm)}
		var re *rewrite.Refusal
		if errors.As(refusal, &re) {
			ts.refusal = re
		} else {
			ts.syntax = true
		}
		return []*trackedStmt{ts}
	}
	fp := fingerprint(norm)
	if plan == nil || !plan.Analyzed || len(plan.Statements) == 0 {
		return []*trackedStmt{{normalized: norm, fingerprint: fp}}
	}
	out := make([]*trackedStmt, len(plan.Statements))
	for i := range plan.Statements {
		out[i] = newTracked(&plan.Statements[i], norm, fp)
	}
	return out
}

// follow updates a relayed session's name-resolution context from the
// statements it sends.
func (t *tracker) follow(stmts []*trackedStmt) {
	if t.masked {
		return
	}
	changes := false
	for _, ts := range stmts {
		if ts.ctx {
			changes = true
			break
		}
	}
	if !changes {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, ts := range stmts {
		if ts.st == nil {
			continue
		}
		switch {
		case ts.st.SearchPath != nil:
			t.path = ts.st.SearchPath
			t.ctxVersion.Add(1)
		case ts.st.ResetSearchPath:
			t.path = nil
			t.ctxVersion.Add(1)
		}
		switch {
		case ts.st.Role != "":
			t.user = ts.st.Role
			t.ctxVersion.Add(1)
		case ts.st.ResetRole:
			t.user = t.s.user
			t.ctxVersion.Add(1)
		}
	}
}

// query registers a simple Query message.
func (t *tracker) query(sql string, plan *rewrite.Plan, refusal error) {
	stmts := t.analyse(sql, plan, refusal)
	t.follow(stmts)
	if len(stmts) == 1 && (stmts[0].st == nil || stmts[0].st.Prepares == "" && stmts[0].st.Declares == "" &&
		stmts[0].st.Executes == "" && stmts[0].st.Fetches == "") {
		// The common case: one statement, recorded as it is.
		now, mono := t.now()
		t.queued(stmts[0])
		locked := t.lock()
		t.queue = append(t.queue, pending{ts: stmts[0], wall: now, mono: mono}, syncPending)
		t.unlock(locked)
		return
	}
	run := make([]*trackedStmt, len(stmts))
	for i, ts := range stmts {
		if ts.st != nil && ts.st.Prepares != "" {
			t.sqlPrep[ts.st.Prepares] = ts
		}
		if ts.st != nil && ts.st.Declares != "" {
			if len(t.cursors) > 10000 {
				clear(t.cursors)
			}
			t.cursors[ts.st.Declares] = ts
		}
		run[i] = t.executed(ts)
	}
	now, mono := t.now()
	t.mu.Lock()
	for _, ts := range run {
		t.queued(ts)
		t.queue = append(t.queue, pending{ts: ts, wall: now, mono: mono})
	}
	t.queue = append(t.queue, syncPending)
	t.mu.Unlock()
}

// executed returns the statement to record for ts: an SQL EXECUTE counts
// the uses, and returns the rows, of the statement it runs; a FETCH
// returns the rows of its cursor's query.
func (t *tracker) executed(ts *trackedStmt) *trackedStmt {
	if !ts.indirect {
		return ts // read in ts's first cache line, not st's
	}
	var src *trackedStmt
	switch {
	case ts.st.Executes != "":
		src = t.sqlPrep[ts.st.Executes]
	case ts.st.Fetches != "":
		src = t.cursors[ts.st.Fetches]
	}
	if src == nil || src.st == nil {
		return ts
	}
	st := *ts.st
	if ts.st.Executes != "" {
		st.Uses = src.st.Uses
	}
	st.Outputs, st.OutputsKnown = src.st.Outputs, src.st.OutputsKnown
	return newTracked(&st, ts.normalized, ts.fingerprint)
}

// parse registers a Parse message.
func (t *tracker) parse(name, sql string, plan *rewrite.Plan, refusal error) {
	stmts := t.analyse(sql, plan, refusal)
	t.follow(stmts)
	if len(t.stmts) > 10000 {
		clear(t.stmts)
	}
	t.stmts[name] = stmts[0]
	t.setBound(name, stmts[0])
}

// setBound makes ts the statement remembered for the name (see bound).
func (t *tracker) setBound(name string, ts *trackedStmt) {
	switch {
	case len(name) > maxBoundName:
		t.bound, t.boundOK = nil, false
		return
	case len(name) <= shortName:
		t.boundLen = uint8(copy(t.boundShort[:], name))
	default:
		t.boundLen, t.boundLong = shortName+1, append(t.boundLong[:0], name...)
	}
	t.bound, t.boundOK = ts, true
}

// isBound reports whether name is the name of t.bound.
func (t *tracker) isBound(name string) bool {
	if !t.boundOK {
		return false
	}
	if t.boundLen <= shortName {
		return name == string(t.boundShort[:t.boundLen])
	}
	return name == string(t.boundLong)
}

// bind registers a Bind message.
func (t *tracker) bind(msg []byte) {
	portal, rest, ok := cutZero(msg[5:])
	if !ok {
		return
	}
	stmt, _, ok := cutZero(rest)
	if !ok {
		return
	}
	var ts *trackedStmt
	if t.isBound(transient(stmt)) {
		ts = t.bound
	} else {
		ts = t.stmts[string(stmt)]
		t.setBound(transient(stmt), ts)
	}
	if len(portal) == 0 {
		t.unnamed = ts
		return
	}
	if cur, ok := t.portals[string(portal)]; ok && cur == ts {
		return
	}
	if len(t.portals) > 10000 {
		clear(t.portals)
	}
	t.portals[string(portal)] = ts
}

// transient returns b as a string without copying it, for a callee that
// reads it and keeps nothing of it (the facts cache copies the text it
// analyses); b must not change while the string is in use.
func transient(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// cutZero is cutNul without the copy: the parts alias b.
func cutZero(b []byte) (before, after []byte, ok bool) {
	for i, c := range b {
		if c == 0 {
			return b[:i], b[i+1:], true
		}
	}
	return nil, nil, false
}

// execute registers an Execute message and returns its statement.
func (t *tracker) execute(msg []byte) *trackedStmt {
	portal, rest, ok := cutZero(msg[5:])
	var maxRows int64
	if ok && len(rest) >= 4 {
		maxRows = int64(int32(uint32(rest[0])<<24 | uint32(rest[1])<<16 | uint32(rest[2])<<8 | uint32(rest[3])))
	}
	ts := t.unnamed
	if len(portal) != 0 {
		ts = t.portals[string(portal)]
	}
	if ts == nil {
		ts = &trackedStmt{}
	} else {
		ts = t.executed(ts)
	}
	now, mono := t.now()
	t.queued(ts)
	locked := t.lock()
	t.queue = append(t.queue, pending{ts: ts, wall: now, mono: mono, maxRows: maxRows})
	t.unlock(locked)
	return ts
}

// close registers a Close message.
func (t *tracker) close(msg []byte) {
	if len(msg) < 6 {
		return
	}
	name, _, _ := cutNul(msg[6:])
	switch {
	case msg[5] == 'S':
		delete(t.stmts, name)
		if t.isBound(name) {
			t.bound, t.boundOK = nil, false
		}
	case name == "":
		t.unnamed = nil
	default:
		delete(t.portals, name)
	}
}

// syncPoint registers a Sync (or the end of a FunctionCall).
func (t *tracker) syncPoint(functionCall bool) {
	var call pending
	if functionCall {
		call.ts = &trackedStmt{normalized: "<function call>"}
		call.wall, call.mono = t.now()
	}
	locked := t.lock()
	if functionCall {
		t.queue = append(t.queue, call)
	}
	t.queue = append(t.queue, syncPending)
	t.unlock(locked)
}

// lock takes t.mu, except while the io_uring loop relays the session:
// then both sides run on the loop's thread, one message at a time, and
// nothing else uses what mu guards (a session goes to the loop, and comes
// back, with both of its pumps stopped, which orders what they did before
// with what runs after). It returns whether it locked, for unlock.
func (t *tracker) lock() bool {
	if t.inLoop {
		return false
	}
	t.mu.Lock()
	return true
}

// unlock undoes lock.
func (t *tracker) unlock(locked bool) {
	if locked {
		t.mu.Unlock()
	}
}

// dropTrailingSyncs takes up to n sync points off the end of the queue
// (the Syncs a server ignored during COPY FROM STDIN, copyrelay.go: the
// client sends nothing else after the Execute of such a COPY).
func (t *tracker) dropTrailingSyncs(n int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for ; n > 0 && len(t.queue) > t.qh && t.queue[len(t.queue)-1].isSync(); n-- {
		t.queue = t.queue[:len(t.queue)-1]
	}
	if t.qh == len(t.queue) {
		t.queue, t.qh = t.queue[:0], 0
	}
}

// next removes and returns the oldest unanswered statement, if any before
// the next sync point.
func (t *tracker) next() (pending, bool) {
	locked := t.lock()
	if t.qh == len(t.queue) || t.queue[t.qh].isSync() {
		t.unlock(locked)
		return pending{}, false
	}
	p := t.queue[t.qh]
	t.queue[t.qh] = pending{}
	t.qh++
	t.compact()
	t.unlock(locked)
	t.dequeued(p.ts)
	return p, true
}

// queued counts a statement about to be queued in transforms, and
// dequeued one taken off the queue.
func (t *tracker) queued(ts *trackedStmt) {
	if ts.transforms {
		t.transforms.Add(1)
	}
}

func (t *tracker) dequeued(ts *trackedStmt) {
	if ts != nil && ts.transforms {
		t.transforms.Add(-1)
	}
}

// compact moves the queue down to its start when most of it is consumed
// (a client that pipelines never lets it run empty). The caller holds
// t.mu.
func (t *tracker) compact() {
	if t.qh >= 1024 && 2*t.qh >= len(t.queue) {
		n := copy(t.queue, t.queue[t.qh:])
		clear(t.queue[n:])
		t.queue, t.qh = t.queue[:n], 0
	}
}

// skipToSync drops the statements before the next sync point; with
// andSync, the sync point too. The caller holds t.mu.
func (t *tracker) skipToSync(andSync bool) {
	for t.qh < len(t.queue) && !t.queue[t.qh].isSync() {
		t.dequeued(t.queue[t.qh].ts)
		t.queue[t.qh] = pending{}
		t.qh++
	}
	if andSync && t.qh < len(t.queue) {
		t.queue[t.qh] = pending{}
		t.qh++
	}
	switch {
	case t.qh < len(t.queue):
		t.compact()
	case cap(t.queue) > 64:
		t.queue, t.qh = nil, 0
	default:
		t.queue, t.qh = t.queue[:0], 0
	}
}

// answered handles a server message that ends a statement: 'C'
// CommandComplete, 'I' EmptyQueryResponse, 's' PortalSuspended, 'V'
// FunctionCallResponse.
func (t *tracker) answered(typ byte, msg []byte) {
	p, ok := t.next()
	if !ok || typ == 'I' {
		return
	}
	rows := int64(0)
	switch typ {
	case 'C':
		rows = tagRows(msg[5:])
	case 's':
		rows = p.maxRows
	}
	t.emit(p, rows, "ok", "", "")
}

// failed handles an ErrorResponse: the statement it answers failed (or
// was refused), and the server skips the rest until the sync point.
func (t *tracker) failed(code string, refusal error) {
	p, ok := t.next()
	t.mu.Lock()
	t.skipToSync(false)
	t.mu.Unlock()
	if !ok {
		return
	}
	var re *rewrite.Refusal
	var ke *keyError
	switch {
	case errors.As(refusal, &ke):
		t.emit(p, 0, "error", code, "")
	case errors.As(refusal, &re):
		t.emit(p, 0, "refused", code, re.Rule)
	case refusal != nil:
		t.emit(p, 0, "refused", code, "syntax")
	default:
		t.emit(p, 0, "error", code, "")
	}
}

// ready handles a ReadyForQuery: everything up to the sync point it
// answers is over.
func (t *tracker) ready() {
	locked := t.lock()
	t.skipToSync(true)
	t.unlock(locked)
}

// emit sends one event to the sink: while the io_uring loop relays the
// session, through the loop's handoff.
func (t *tracker) emit(p pending, rows int64, outcome, code, rule string) {
	if t.hand == nil && t.sink == nil {
		return // hand is set only with a sink
	}
	d := time.Duration(t.s.stamp(1) - p.mono)
	if t.hand != nil {
		t.hand.add(t, p.ts, p.wall, d, rows, outcome, code, rule)
		return
	}
	if t.ranShort(p.ts, p.wall, d, rows, outcome) {
		return
	}
	// The session's fields of t.ev are set once (newTracker).
	t.statement(&t.ev, p.ts, p.wall, d, rows, outcome, code, rule)
}

// ranShort hands a statement that succeeded to the sink's short way
// (RanSink), and reports whether the sink took it.
func (t *tracker) ranShort(ts *trackedStmt, wall int64, d time.Duration, rows int64, outcome string) bool {
	return t.ran != nil && outcome == "ok" && ts != nil && ts.refusal == nil && ts.memo.Load() != nil &&
		t.ran.Ran(&ts.memo, time.Unix(0, wall), d, rows)
}

// statement hands a statement to the sink as ev, whose session's fields
// are set.
func (t *tracker) statement(ev *StatementEvent, ts *trackedStmt, wall int64, d time.Duration, rows int64, outcome, code, rule string) {
	ev.Start = time.Unix(0, wall)
	ev.Duration = d
	ev.Rows, ev.Outcome, ev.SQLState, ev.Rule = rows, outcome, code, rule
	ev.Normalized, ev.Fingerprint, ev.Kind, ev.Uses, ev.Memo = "", "", "", nil, nil
	if ts != nil {
		ev.Normalized, ev.Fingerprint = ts.normalized, ts.fingerprint
		if ts.st != nil {
			ev.Kind = ts.st.Kind
			ev.Uses = ts.st.Uses
		}
		if ts.refusal != nil {
			ev.Outcome, ev.Rule = "refused", ts.refusal.Rule
		}
		ev.Memo = &ts.memo
	}
	t.sink.Statement(ev)
}

// fingerprint identifies a normalized statement text: 64-bit FNV-1a in
// hex, computed once per analysed text.
func fingerprint(normalized string) string {
	if normalized == "" {
		return ""
	}
	h := uint64(14695981039346656037)
	for i := 0; i < len(normalized); i++ {
		h ^= uint64(normalized[i])
		h *= 1099511628211
	}
	const hex = "0123456789abcdef"
	var b [16]byte
	for i := 15; i >= 0; i-- {
		b[i] = hex[h&15]
		h >>= 4
	}
	return string(b[:])
}

// tagRows returns the row count at the end of a CommandComplete tag
// ("SELECT 5", "INSERT 0 5", "COPY 10"), or 0.
func tagRows(body []byte) int64 {
	if i := bytes.IndexByte(body, 0); i >= 0 {
		body = body[:i]
	}
	sp := bytes.LastIndexByte(body, ' ')
	if sp < 0 {
		return 0
	}
	digits := body[sp+1:]
	if len(digits) == 0 || len(digits) > 18 {
		return 0 // not a count, or more rows than anyone returns
	}
	var n int64
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0
		}
		n = n*10 + int64(c-'0')
	}
	return n
}

// factsCache shares the analyses of relayed sessions' texts between
// sessions: the key is the session's context (grants, search_path, user,
// policy and catalog versions) and the normalized text, so texts that
// differ only in their constants are analysed once.
type factsCache struct {
	mu      sync.Mutex
	entries map[string][]*trackedStmt
	max     int
	bytes   int // what the entries hold, estimated (factsSize)
}

// Bounds of the facts cache's memory: a text whose key is longer than
// maxFactsKey (a bulk statement) is analysed each time it runs and kept
// nowhere, and the cache is cleared when its entries would hold more than
// maxFactsBytes; so distinct large statements cannot fill the proxy's
// memory.
const (
	maxFactsKey   = rewrite.MaxCachedText
	maxFactsBytes = 64 << 20
)

// factsSize estimates what an entry holds: its key, the normalized text,
// and the analysed text with its analysis (taken to be as large again).
func factsSize(key, norm, sql int) int { return key + norm + 2*sql }

func newFactsCache(max int) *factsCache {
	return &factsCache{entries: map[string][]*trackedStmt{}, max: max}
}

// lookup returns the analysis of sql for t's session.
func (c *factsCache) lookup(t *tracker, sql string) []*trackedStmt {
	mk := t.s.srv.cfg.Masking
	policy, snap := mk.Current()
	if policy == nil || snap == nil {
		return []*trackedStmt{{}}
	}
	if ctxV := t.ctxVersion.Load(); !t.prefixValid || t.prefixPol != policy || t.prefixSnap != snap || t.prefixCtxV != ctxV {
		t.mu.Lock()
		path, user, ctxV := t.path, t.user, t.ctxVersion.Load()
		t.mu.Unlock()
		t.prefixPath, t.prefixUser = path, user
		p := t.prefix[:0]
		p = append(p, policy.Hash...)
		p = strconv.AppendUint(append(p, 0), snap.Version, 10)
		p = append(append(p, 0), t.grants.Key()...)
		p = append(append(p, 0), user...)
		for _, e := range path {
			p = append(append(p, 0), e...)
		}
		t.prefix = append(p, 1)
		t.prefixPol, t.prefixSnap, t.prefixCtxV, t.prefixValid = policy, snap, ctxV, true
		t.lastStmts = nil
	}
	scs := !t.s.scsOff.Load()
	if t.lastStmts != nil && t.lastRawOK && t.lastScs == scs && rewrite.SameShape(transient(t.lastRaw), t.lastLits, sql, scs) {
		return t.lastStmts
	}
	path, user := t.prefixPath, t.prefixUser
	var ok bool
	t.scratch = append(t.scratch[:0], t.prefix...)
	prefix := len(t.scratch)
	// The key has a NUL where a literal was (Normalize with a
	// LiteralScan), which no statement text has, so that no two shapes
	// share one ("x ? '1'" and "x '1' ?" would with "?").
	t.lits = rewrite.LiteralScan{Lits: t.lits.Lits[:0]}
	t.scratch, ok = rewrite.Normalize(t.scratch, sql, scs, &t.lits)
	if !ok {
		// Not scannable: key on the exact text.
		t.scratch = append(t.scratch[:prefix], sql...)
		t.lits.Lits = t.lits.Lits[:0]
	}
	// Only texts up to maxShapeMemo are kept, so lastRaw and lastLits stay
	// small.
	if t.lastRawOK = len(sql) <= maxShapeMemo; t.lastRawOK {
		t.lastRaw, t.lastLits, t.lastScs = append(t.lastRaw[:0], sql...), append(t.lastLits[:0], t.lits.Lits...), scs
	}
	if cap(t.lits.Lits) > maxShapeMemo/8 {
		t.lits.Lits = nil // a bulk statement's literals
	}
	if t.lastStmts != nil && string(t.lastKey) == string(t.scratch) {
		return t.lastStmts
	}
	bulk := len(t.scratch) > maxFactsKey
	if !bulk {
		c.mu.Lock()
		hit, found := c.entries[string(t.scratch)]
		c.mu.Unlock()
		if found {
			t.remember(hit)
			return hit
		}
	}
	norm := ""
	if ok {
		norm = strings.ReplaceAll(string(t.scratch[prefix:]), "\x00", "?")
	}
	// sql may be a view of a relay buffer (transient): what the analysis
	// and the cache keep must not point into it.
	sql = strings.Clone(sql)
	grants := t.grants
	if g, err := policy.Grants(t.base.Roles); err == nil {
		grants = g
	}
	var sp []string = path
	if sp == nil {
		sp = []string{"$user", "public"}
	}
	plan, err := rewrite.Analyze(sql, &rewrite.Session{Policy: policy, Grants: grants, Catalog: snap, SearchPath: sp, User: user, Track: true})
	if err != nil {
		plan = nil
	}
	stmts := stmtsOf(plan, nil, norm)
	if !bulk {
		size := factsSize(len(t.scratch), len(norm), len(sql))
		c.mu.Lock()
		if _, dup := c.entries[string(t.scratch)]; !dup {
			if len(c.entries) >= c.max || c.bytes+size > maxFactsBytes {
				clear(c.entries)
				c.bytes = 0
			}
			c.entries[string(t.scratch)] = stmts
			c.bytes += size
		}
		c.mu.Unlock()
	}
	t.remember(stmts)
	return stmts
}

// remember makes stmts, found for the key in t.scratch, the session's
// last facts-cache entry (a key longer than maxShapeMemo is not kept),
// and lets go of a scratch buffer a long text has grown.
func (t *tracker) remember(stmts []*trackedStmt) {
	if len(t.scratch) > maxShapeMemo {
		t.lastKey, t.lastStmts = nil, nil
	} else {
		t.lastKey, t.lastStmts = append(t.lastKey[:0], t.scratch...), stmts
	}
	if cap(t.scratch) > maxShapeMemo {
		t.scratch = nil
	}
}

// errorCode returns the SQLSTATE of an ErrorResponse message.
func errorCode(msg []byte) string {
	body := msg[5:]
	for len(body) > 1 {
		field := body[0]
		v, rest, ok := cutNul(body[1:])
		if !ok {
			return ""
		}
		if field == 'C' {
			return v
		}
		body = rest
	}
	return ""
}
