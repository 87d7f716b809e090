package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgveil/pgveil/catalog"
	"github.com/pgveil/pgveil/rewrite"
	"github.com/pgveil/pgveil/rules"
)

// Masking supplies the policy and the catalog snapshot that decide, per
// session, whether statements are rewritten.
type Masking interface {
	// Current returns the policy and snapshot to use now. A nil policy
	// relays every session unchanged; a nil snapshot (still loading)
	// refuses new sessions with 57P03.
	Current() (*rules.Policy, *catalog.Snapshot)
	// Invalidate asks for a catalog refresh soon (after DDL).
	Invalidate()
}

// SQLSTATE codes of the masking layer.
const (
	codeInsufficientPrivilege = "42501"
	codeSyntaxError           = "42601"
	codeCannotConnectNow      = "57P03"
)

// refusedMarker is the statement sent to the server in place of a refused
// one: it fails at parse analysis with "column does not exist", so that the
// server aborts a transaction block exactly as for any other error and
// answers in order; the proxy then replaces that error with the refusal.
const refusedMarker = "pgveil_refused_"

// maskedSession is the rewrite state of a session that may not see every
// class raw.
type maskedSession struct {
	s     *session
	cache *rewrite.Cache
	// raw is set for a session that sees every class raw, analysed only
	// because the policy has encrypted columns: its errors are not
	// scrubbed.
	raw bool
	// shape and lits are scratch space for statement templates (analyse);
	// bound and boundLits are set by analyse when a template that may run
	// as a prepared statement answered, with the text's literals.
	shape     []byte
	lits      []rewrite.Literal
	bound     *rewrite.Bound
	boundLits []rewrite.Literal
	// tplStmts names the prepared statements the session made for bound
	// templates (by Bound.ID); tplSeq numbers them. Guarded by mu.
	tplStmts map[tplKey]tplStmt
	tplSeq   uint64
	// boundBuf is runBound's output buffer, reused.
	boundBuf []byte
	// portals records, for every portal the session opened (Bind's
	// destination, DECLARE's cursor), the policy it was opened under and
	// whether running it may change the context: a portal keeps the plan
	// it was opened with, so after a policy reload it would go on
	// returning what the old policy allowed. portalBase is the policy
	// in force when the map was last cleared: a portal not in the map
	// was opened before then. Guarded by mu.
	portals    map[string]portalInfo
	portalBase string
	// rs is the rewrite session of the last statement, reused while the
	// policy, catalog and context stay the same (session).
	rs *rewrite.Session

	mu         sync.Mutex
	policy     *rules.Policy
	grants     *rules.Grants
	roles      []string
	searchPath []string // the server's search_path, as last read
	user       string   // the server's current_user, as last read
	contextKey string   // names (user, searchPath); see setContext
	refusals   map[uint64]error
	nextID     uint64
	// prepared maps each prepared statement (protocol-level, "" for the
	// unnamed one, or SQL PREPARE) to the name-resolution context it was
	// analysed in. PostgreSQL re-analyses a prepared statement when
	// search_path or the role changes, so running it in another context
	// would resolve names the proxy never checked; that is refused.
	prepared map[string]prepInfo
	// journal lists the changes to prepared and portals the server has
	// not confirmed yet, in the order their messages were sent: after an
	// error in a batch the server skips every message up to the Sync, and
	// a message that fails changes nothing, so the changes the answers do
	// not confirm are undone at the batch's ReadyForQuery (settle).
	journal []bookChange
	// pos is where the message being handled (client side) stands among
	// those of its batch (sentBatch) whose answers confirm changes; sent
	// counts them per answer kind.
	pos       bookPos
	sentBatch uint64
	sent      [numAnswerKinds]uint32
	// answered counts the answers of each kind in the batch being
	// answered (server side; guarded by mu).
	answered [numAnswerKinds]uint32

	// dirty (client side only) says a statement sent since the last read
	// of search_path may have changed it; changedInTx that a change
	// happened since the session was last idle, so that ending the
	// transaction (which may undo it) needs a new read too.
	dirty, changedInTx bool
	// refreshing is set while the proxy's own context query runs; the
	// server side consumes its answer and signals refreshed.
	refreshing atomic.Bool
	refreshOK  atomic.Bool
	refreshed  chan struct{}
	// idle receives a token at every ReadyForQuery.
	idle chan struct{}
	// lastPlan and lastErr are the outcome of the last analysis (client
	// side only), for the statement tracker.
	lastPlan *rewrite.Plan
	lastErr  error
	// lastSQL and lastName are the text (and statement name) of the last
	// Query or Parse, for the tracker too.
	lastSQL, lastName string

	// copyPhase follows the client's COPY FROM STDIN (copysync.go):
	// copyNone, copyStarting (the statement was sent, the server has not
	// said whether it started) or copyRunning. copyMu guards the
	// transitions and copyBatch, the sync point whose statement starts
	// the COPY; copyEarly is the sync point of a COPY the client ended
	// before the server started it (0: none); copyFailed the last sync
	// point answered with an error (a COPY later in its batch is skipped);
	// copyDecided wakes a client side waiting for copyStarting to end.
	copyPhase   atomic.Int32
	copyMu      sync.Mutex
	copyBatch   uint64
	copyFailed  uint64
	copyEarly   atomic.Uint64
	copyDecided chan struct{}
}

// decideMode runs at the first ReadyForQuery: it resolves the session's
// roles against the policy and reports whether statements must be
// rewritten. An error ends the session.
func (s *session) decideMode() (*maskedSession, error) {
	mk := s.srv.cfg.Masking
	if mk == nil {
		return nil, nil
	}
	policy, snap := mk.Current()
	if policy == nil {
		return nil, nil
	}
	m, roles, grants, err := s.decideMasking(policy, snap)
	// The tracker follows statements to their results for the usage
	// sink, and for the output transforms of encrypted columns.
	if err == nil && grants != nil && (s.srv.cfg.Statements != nil || m != nil && policy.HasEncrypted()) {
		s.track = newTracker(s, s.srv.cfg.Statements, roles, grants, m != nil)
	}
	return m, err
}

// decideMasking resolves the session's roles and grants and returns its
// masking state (nil when it sees everything raw).
func (s *session) decideMasking(policy *rules.Policy, snap *catalog.Snapshot) (*maskedSession, []string, *rules.Grants, error) {
	if snap == nil {
		return nil, nil, nil, &clientError{code: codeCannotConnectNow, msg: "pgveil: the catalog is not loaded yet; retry in a moment"}
	}
	if snap.Database != s.database {
		return nil, nil, nil, &clientError{code: codeInvalidAuthSpec, msg: fmt.Sprintf("pgveil: this proxy enforces its policy on database %q only", snap.Database)}
	}
	roles := snap.RolesOf(s.user)
	grants, err := policy.Grants(roles)
	if err != nil {
		if errors.Is(err, rules.ErrUnknownRole) {
			return nil, nil, nil, &clientError{code: codeInvalidAuthSpec, msg: "pgveil: " + err.Error()}
		}
		return nil, nil, nil, err
	}
	// Sessions that see everything raw are relayed unchanged, unless the
	// policy stores columns encrypted: then every session's writes must
	// be encrypted and its reads may be decrypted.
	raw := grants.AllRaw()
	if raw && !policy.HasEncrypted() {
		return nil, roles, grants, nil
	}
	if v := s.params["client_encoding"]; !utf8Encoding(v) {
		return nil, nil, nil, &clientError{code: codeInvalidAuthSpec, msg: fmt.Sprintf("pgveil: masked sessions must use client_encoding UTF8 (this session uses %s)", v)}
	}
	if v := s.params["standard_conforming_strings"]; v != "on" {
		return nil, nil, nil, &clientError{code: codeInvalidAuthSpec, msg: "pgveil: masked sessions need standard_conforming_strings=on"}
	}
	return &maskedSession{s: s, raw: raw, cache: s.srv.cache, policy: policy, grants: grants, roles: roles, refusals: map[uint64]error{},
		user: s.user, prepared: map[string]prepInfo{}, refreshed: make(chan struct{}, 1), idle: make(chan struct{}, 1), copyDecided: make(chan struct{}, 1)}, roles, grants, nil
}

func utf8Encoding(v string) bool {
	v = strings.ToLower(strings.ReplaceAll(v, "-", ""))
	return v == "utf8" || v == "unicode"
}

// session returns the rewrite inputs for the next statement, picking up a
// reloaded policy or refreshed catalog.
func (m *maskedSession) session() (*rewrite.Session, error) {
	policy, snap := m.s.srv.cfg.Masking.Current()
	if policy == nil || snap == nil {
		return nil, errors.New("policy or catalog unavailable")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if policy != m.policy {
		g, err := policy.Grants(m.roles)
		if err != nil {
			return nil, err
		}
		m.policy, m.grants = policy, g
	}
	if rs := m.rs; rs != nil && rs.Policy == m.policy && rs.Grants == m.grants && rs.Catalog == snap && rs.User == m.user &&
		len(rs.SearchPath) == len(m.searchPath) && (len(rs.SearchPath) == 0 || &rs.SearchPath[0] == &m.searchPath[0]) {
		// setContext replaces the path, never changes it in place.
		return rs, nil
	}
	m.rs = &rewrite.Session{Policy: m.policy, Grants: m.grants, Catalog: snap, SearchPath: m.searchPath, User: m.user}
	return m.rs, nil
}

// analyse rewrites sql, or returns the refusal the client must see. text
// is what to send when the plan is Rewritten: plan.SQL, or, when a
// statement template answered (rewrite/template.go), the template with
// sql's literals.
//
// With simple (a Query message), a template the session may run as its
// prepared statement (m.bound) returns no text: query runs it instead.
func (m *maskedSession) analyse(sql string, simple bool) (plan *rewrite.Plan, text string, err error) {
	rs, err := m.session()
	if err != nil {
		return nil, "", &rewrite.Refusal{Rule: "unavailable", Message: "the policy or catalog is unavailable"}
	}
	var lits []rewrite.Literal
	var bound *rewrite.Bound
	plan, text, bound, err = m.cache.RewriteShape(sql, rs, func() (string, []rewrite.Literal) {
		// standard_conforming_strings is pinned on in these sessions.
		ls := rewrite.LiteralScan{Lits: m.lits[:0]}
		shape, ok := rewrite.Normalize(m.shape[:0], sql, true, &ls)
		m.shape, m.lits = shape[:0], ls.Lits[:0]
		if !ok || ls.Other {
			return "", nil
		}
		lits = ls.Lits
		return string(shape), ls.Lits
	}, simple)
	m.bound, m.boundLits = nil, nil
	if err != nil {
		return nil, "", err
	}
	for _, st := range plan.Statements {
		if reservedName(st.Prepares) || reservedName(st.Executes) || reservedName(st.Deallocates) || reservedName(st.Declares) {
			return nil, "", errReservedName
		}
	}
	if bound != nil {
		m.bound, m.boundLits = bound, lits
	}
	// The server is the authority on search_path: after a statement that
	// may change it, or that ends a transaction in which it changed, the
	// proxy reads it again before the next statement (see refreshPath).
	if changesContext(plan) {
		m.dirty, m.changedInTx = true, true
	}
	changed := false  // an earlier statement of this text may change the context
	var here []string // statements an earlier statement of this text prepares
	for i := range plan.Statements {
		st := &plan.Statements[i]
		switch {
		case st.Kind == "TransactionStmt" && m.changedInTx:
			m.dirty = true
		}
		if st.Executes != "" {
			switch {
			case changed:
				return nil, "", staleRefusal(st.Executes)
			case slices.Contains(here, st.Executes):
			default:
				if err := m.stale(st.Executes); err != nil {
					return nil, "", err
				}
			}
		}
		if st.Fetches != "" && !slices.Contains(here, st.Fetches) {
			if _, err := m.stalePortal(st.Fetches, m.policy.Hash); err != nil {
				return nil, "", err
			}
		}
		if st.Prepares != "" {
			here = append(here, st.Prepares)
		}
		if st.Declares != "" {
			here = append(here, st.Declares)
		}
		if st.SearchPath != nil || st.ResetSearchPath || st.Role != "" || st.ResetRole {
			changed = true
		}
	}
	return plan, text, nil
}

// account keeps the books of the prepared statements a statement the
// session sends (plan) creates or removes. It runs only for statements
// that are not refused, so that a refused DEALLOCATE forgets nothing.
// With simple (a Query's statements), each statement's changes stand once
// its CommandComplete came; otherwise (the text of a Parse) once the
// ParseComplete came.
func (m *maskedSession) account(plan *rewrite.Plan, simple bool) {
	if plan == nil {
		return
	}
	for i, st := range plan.Statements {
		if simple {
			m.pos = bookPos{batch: m.s.syncsSent.Load() + 1, kind: answerDone, ord: uint32(i)}
		}
		if st.Declares != "" {
			m.openPortal(st.Declares, m.policy.Hash, false, false)
		}
		m.mu.Lock()
		_, exists := m.prepared[st.Prepares]
		m.mu.Unlock()
		switch {
		case st.Prepares != "" && exists:
			// The server refuses it (42P05) and keeps the first.
		case st.Prepares != "":
			m.remember(st.Prepares, "", nil, nil, false, false, false)
		case st.DeallocateAll:
			m.mu.Lock()
			for name := range m.prepared {
				m.setPrepared(name, prepInfo{}, false)
			}
			m.tplStmts = nil
			m.mu.Unlock()
		case st.Deallocates != "":
			m.mu.Lock()
			m.setPrepared(st.Deallocates, prepInfo{}, false)
			for k, ts := range m.tplStmts {
				if ts.name == st.Deallocates {
					delete(m.tplStmts, k)
				}
			}
			m.mu.Unlock()
		}
	}
}

// Answer kinds that confirm changes to the books (bookPos.kind).
const (
	answerParse = iota // ParseComplete
	answerBind         // BindComplete
	answerClose        // CloseComplete
	answerDone         // CommandComplete (of a simple Query's statement)
	numAnswerKinds
)

// bookPos is where a message that may change the books was sent: its
// batch (the sync point that ends it, counted like syncsSent) and its
// place among the messages of its batch whose answers are of one kind.
type bookPos struct {
	batch uint64
	kind  uint8
	ord   uint32
}

// bookChange is a change to prepared (or, with portal, to portals) that
// the server has not confirmed yet: the record of name before it (had
// says whether there was one).
type bookChange struct {
	pos    bookPos
	portal bool
	name   string
	had    bool
	prep   prepInfo
	port   portalInfo
	// undone is set when the change was undone.
	undone bool
}

// next returns the position of the next message sent whose answer is of
// kind, and makes it the one later changes are journaled under (client
// side only).
func (m *maskedSession) next(kind uint8) {
	batch := m.s.syncsSent.Load() + 1
	if batch != m.sentBatch {
		m.sentBatch, m.sent = batch, [numAnswerKinds]uint32{}
	}
	m.pos = bookPos{batch: batch, kind: kind, ord: m.sent[kind]}
	m.sent[kind]++
}

// setPrepared records (ok) or removes prepared statement name, journaled
// at the current position. m.mu is held.
func (m *maskedSession) setPrepared(name string, info prepInfo, ok bool) {
	prev, had := m.prepared[name]
	m.journal = append(m.journal, bookChange{pos: m.pos, name: name, had: had, prep: prev})
	if ok {
		m.prepared[name] = info
	} else {
		delete(m.prepared, name)
	}
}

// setPortal records (ok) or removes portal name, journaled at the
// current position. m.mu is held.
func (m *maskedSession) setPortal(name string, info portalInfo, ok bool) {
	prev, had := m.portals[name]
	m.journal = append(m.journal, bookChange{pos: m.pos, portal: true, name: name, had: had, port: prev})
	if ok {
		m.portals[name] = info
	} else {
		delete(m.portals, name)
	}
}

// answer counts an answer of kind from the server (server side).
func (m *maskedSession) answer(kind uint8) {
	m.mu.Lock()
	m.answered[kind]++
	m.mu.Unlock()
}

// settle runs at the ReadyForQuery that ends batch (server side): the
// changes of the batch's messages that the server's answers confirm
// stand; the others (the message failed, or was skipped after an error)
// are undone, latest first. An undone change whose name a later change
// (of a batch still to be answered) touched becomes that change's
// starting point instead, so the later change keeps its effect.
func (m *maskedSession) settle(batch uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ans := m.answered
	m.answered = [numAnswerKinds]uint32{}
	n := 0
	for n < len(m.journal) && m.journal[n].pos.batch <= batch {
		n++
	}
	for i := n - 1; i >= 0; i-- {
		c := &m.journal[i]
		if c.pos.batch == batch && c.pos.ord < ans[c.pos.kind] {
			continue // confirmed
		}
		c.undone = true
		later := -1
		for j := i + 1; j < len(m.journal); j++ {
			if l := &m.journal[j]; !l.undone && l.portal == c.portal && l.name == c.name {
				later = j
				break
			}
		}
		switch {
		case later >= 0:
			l := &m.journal[later]
			l.had, l.prep, l.port = c.had, c.prep, c.port
		case c.portal && c.had:
			if m.portals == nil {
				m.portals = map[string]portalInfo{}
			}
			m.portals[c.name] = c.port
		case c.portal:
			delete(m.portals, c.name)
		case c.had:
			m.prepared[c.name] = c.prep
		default:
			delete(m.prepared, c.name)
		}
	}
	m.journal = slices.Delete(m.journal, 0, n)
}

// changesContext reports whether running plan may change search_path or
// the current role.
func changesContext(plan *rewrite.Plan) bool {
	for _, st := range plan.Statements {
		if st.SearchPath != nil || st.ResetSearchPath || st.Role != "" || st.ResetRole {
			return true
		}
	}
	return false
}

// setContext records the server's search_path and current user, and the
// key naming that name-resolution context.
func (m *maskedSession) setContext(path []string, user string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.searchPath, m.user = path, user
	m.contextKey = user + "\x00" + strings.Join(path, "\x00")
}

// prepInfo is what the proxy knows of a prepared statement: the
// name-resolution context and the policy it was analysed under, and for
// protocol-level statements the client's text and parameter types, so it
// can be prepared again under a reloaded policy.
type prepInfo struct {
	context, policy string
	sql             string
	types           []byte
	// encrypt lists the parameters to encrypt at each Bind.
	encrypt []rewrite.EncryptValue
	// noNames is set for a protocol-level statement that resolves no
	// names (resolvesNoNames); changer for one that changes search_path
	// or the role when executed (binding it makes the context dirty);
	// copyFrom for a COPY ... FROM STDIN (see copyStart).
	noNames, changer, copyFrom bool
}

// remember records that statement name was analysed in the current
// context under the current policy; sql and types are the client's Parse
// (empty for SQL PREPARE).
func (m *maskedSession) remember(name, sql string, types []byte, enc []rewrite.EncryptValue, noNames, changer, copyFrom bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.prepared) > 100000 {
		m.prepared = map[string]prepInfo{}
	}
	m.setPrepared(name, prepInfo{context: m.contextKey, policy: m.policy.Hash, sql: sql, types: types, encrypt: enc, noNames: noNames, changer: changer, copyFrom: copyFrom}, true)
}

// stale reports whether statement name was analysed in another context,
// or under another policy when it cannot be prepared again (SQL PREPARE).
//
// It returns the refusal, nil when the statement may run. A name the
// proxy does not know is refused too (fail closed): every statement a
// masked session prepares is recorded, so an unknown one was never
// prepared (the server would refuse it as well), or its record was lost
// (a DISCARD ALL that failed, more than the bound of records).
func (m *maskedSession) stale(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	prev, ok := m.prepared[name]
	switch {
	case !ok:
		return &rewrite.Refusal{Rule: "stale-statement", Message: "prepared statement " + strconv.Quote(name) + " is not known to pgveil (it was not prepared in this session, or was deallocated); prepare it again"}
	case prev.context != m.contextKey || prev.sql == "" && prev.policy != m.currentPolicyHash():
		return staleRefusal(name)
	}
	return nil
}

// staleRefusal is the refusal of a statement analysed under another
// search_path, role or policy.
func staleRefusal(name string) error {
	return &rewrite.Refusal{Rule: "stale-statement", Message: "prepared statement " + strconv.Quote(name) + " was analysed under another search_path, role or policy; prepare it again"}
}

// currentPolicyHash is the hash of the policy in force now.
func (m *maskedSession) currentPolicyHash() string {
	if p, _ := m.s.srv.cfg.Masking.Current(); p != nil {
		return p.Hash
	}
	return ""
}

// reprepare returns the messages that prepare statement name again under
// the policy in force, when it was analysed under an older one: a Close
// and a Parse of the new rewrite, whose answers (CloseComplete,
// ParseComplete) the server side drops. Masks keep each column's type, so
// the client's view of the statement does not change. It returns nil when
// nothing is to be done.
func (m *maskedSession) reprepare(name string) []byte {
	m.mu.Lock()
	info, ok := m.prepared[name]
	m.mu.Unlock()
	if !ok || info.sql == "" || info.policy == m.currentPolicyHash() || info.context != m.contextKey {
		return nil
	}
	sql, plan, err := m.textFor(info.sql, false)
	m.lastPlan, m.lastErr = plan, err
	if t := m.s.track; t != nil {
		t.parse(name, info.sql, plan, err)
	}
	m.next(answerClose)
	m.next(answerParse)
	if err != nil {
		sql = m.refuse(err)
	} else {
		m.account(plan, false)
	}
	m.remember(name, info.sql, info.types, paramEncrypts(plan), plan != nil && resolvesNoNames(plan), plan != nil && changesContext(plan), copiesIn(plan))
	out, _ := (&pgproto3.Close{ObjectType: 'S', Name: name}).Encode(nil)
	out = appendParse(out, name, sql, info.types)
	m.s.swallow(1, 1)
	m.s.srv.log.Info("statement prepared again under the reloaded policy", "session", m.s.id)
	return out
}

// appendParse appends a Parse message; types is the raw parameter-type
// part of the client's Parse (count and OIDs).
func appendParse(out []byte, name, sql string, types []byte) []byte {
	start := len(out)
	out = append(out, 'P', 0, 0, 0, 0)
	out = append(out, name...)
	out = append(out, 0)
	out = append(out, sql...)
	out = append(out, 0)
	out = append(out, types...)
	putLength(out[start:])
	return out
}

// bind checks a Bind message: binding a statement analysed under another
// search_path or role is refused (the Bind is replaced by a Parse of the
// refusal marker, so the server reports an error at this point of the
// batch and skips the rest until Sync), and so is binding, after a
// statement of the same batch that may change them, a statement that
// resolves names (like parse's errContextInBatch). atBoundary says the
// Bind is the first message after a sync point.
func (m *maskedSession) bind(msg []byte, atBoundary bool) ([]byte, error) {
	portal, rest, ok := cutNul(msg[5:])
	if !ok {
		return nil, &protocolError{"malformed Bind message"}
	}
	stmt, _, ok := cutNul(rest)
	if !ok {
		return nil, &protocolError{"malformed Bind message"}
	}
	if reservedName(stmt) || reservedName(portal) {
		return m.refusedMessage(errReservedName)
	}
	m.mu.Lock()
	changes := m.prepared[stmt].changer
	noNames := m.prepared[stmt].noNames
	copyFrom := m.prepared[stmt].copyFrom
	m.mu.Unlock()
	if m.dirty && !atBoundary && !noNames {
		return m.refusedMessage(errContextInBatch)
	}
	if changes {
		m.dirty, m.changedInTx = true, true
	}
	re := m.reprepare(stmt)
	if re == nil {
		if err := m.stale(stmt); err != nil {
			return m.refusedMessage(err)
		}
	}
	out, err := m.bindEncrypted(stmt, msg)
	if err != nil {
		return nil, err
	}
	if out[0] == 'B' {
		// The portal's record stands once the server opened it.
		m.next(answerBind)
		m.openPortal(portal, m.currentPolicyHash(), changes, copyFrom)
	}
	if re == nil {
		return out, nil
	}
	return append(re, out...), nil
}

// refusedMessage returns the Parse of the refusal marker that replaces a
// refused message in a batch (its ParseComplete never comes).
func (m *maskedSession) refusedMessage(err error) ([]byte, error) {
	m.next(answerParse)
	return (&pgproto3.Parse{Query: m.refuse(err)}).Encode(nil)
}

// describeOrClose checks a Describe or Close message: one naming a
// prepared statement of the proxy's own is refused (replaced by a Parse of
// the refusal marker); any other passes unchanged.
func (m *maskedSession) describeOrClose(typ byte, msg []byte) ([]byte, error) {
	var name string
	ok := len(msg) >= 6
	if ok {
		name, _, ok = cutNul(msg[6:])
	}
	if !ok {
		kind := "Describe"
		if typ == 'C' {
			kind = "Close"
		}
		return nil, &protocolError{"malformed " + kind + " message"}
	}
	if msg[5] == 'S' && reservedName(name) {
		return m.refusedMessage(errReservedName)
	}
	if typ == 'C' {
		m.next(answerClose)
		m.mu.Lock()
		if msg[5] == 'P' {
			if _, ok := m.portals[name]; ok {
				m.setPortal(name, portalInfo{}, false)
			}
		} else if _, ok := m.prepared[name]; ok {
			// The statement is gone: a Parse of the name may follow.
			m.setPrepared(name, prepInfo{}, false)
		}
		m.mu.Unlock()
	}
	return msg, nil
}

// refuse registers a refusal and returns the marker statement that stands
// in for the refused one.
func (m *maskedSession) refuse(err error) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.nextID++
	id := m.nextID
	m.refusals[id] = err
	// Refusals the server never reaches (it skipped them after an earlier
	// error in the same batch) are forgotten after a while.
	if len(m.refusals) > 1024 {
		for k := range m.refusals {
			if k+1024 < id {
				delete(m.refusals, k)
			}
		}
	}
	var rule string
	var re *rewrite.Refusal
	var ke *keyError
	switch {
	case errors.As(err, &re):
		rule = re.Rule
	case errors.As(err, &ke):
		rule = "key-service"
	default:
		rule = "syntax"
	}
	m.s.srv.log.Info("statement refused", "session", m.s.id, "user", m.s.user, "rule", rule)
	m.s.srv.cfg.Observer.Refused(rule)
	return "SELECT " + refusedMarker + strconv.FormatUint(id, 10)
}

// takeRefusal returns the refusal a marker error stands for.
func (m *maskedSession) takeRefusal(e *pgproto3.ErrorResponse) error {
	if e.Code != "42703" {
		return nil
	}
	const prefix = `column "` + refusedMarker
	if !strings.HasPrefix(e.Message, prefix) {
		return nil
	}
	idText, _, ok := strings.Cut(e.Message[len(prefix):], `"`)
	if !ok {
		return nil
	}
	id, err := strconv.ParseUint(idText, 10, 64)
	if err != nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.refusals[id]
	delete(m.refusals, id)
	return r
}

// readyForQuery wakes a client side waiting for the session to be idle.
func (m *maskedSession) readyForQuery() {
	select {
	case m.idle <- struct{}{}:
	default:
	}
}

// refreshWaitLimit bounds refreshPath's waits.
var refreshWaitLimit = 2 * time.Minute

// refreshPath reads the server's search_path when a statement may have
// changed it. It runs on the client side between sync points: it waits
// until every earlier answer has arrived, then sends contextQuery, whose
// answer the server side consumes.
func (m *maskedSession) refreshPath() error {
	if !m.dirty {
		return nil
	}
	// The waits are bounded: the client pump waits here, so a session
	// whose sync points the server does not answer as the proxy expects
	// must end rather than hang. (The Syncs the server ignores during
	// COPY FROM STDIN are not counted: copysync.go.)
	limit := time.NewTimer(refreshWaitLimit)
	defer limit.Stop()
	for m.s.pending.Load() > 0 {
		select {
		case <-m.idle:
		case <-m.s.endingCh:
			return errClientGone
		case <-limit.C:
			return &protocolError{"the server did not answer the session's earlier statements in time to re-read its search_path"}
		}
	}
	m.refreshing.Store(true)
	if err := m.s.toSrv.write(contextQuery, false); err != nil {
		return &writeError{err}
	}
	select {
	case <-m.refreshed:
	case <-m.s.endingCh:
		return errClientGone
	case <-limit.C:
		return &protocolError{"the server did not answer pgveil's search_path query in time"}
	}
	if !m.refreshOK.Load() {
		// The query failed (the transaction is aborted): try again before the
		// next statement; the old value stays meanwhile.
		return nil
	}
	m.dirty = false
	if byte(m.s.txStatus.Load()) == 'I' {
		m.changedInTx = false
	}
	return nil
}

// query rewrites a simple-protocol Query message.
//
// inBatch says the Query arrives inside an unfinished extended-protocol
// batch: it then never runs as a bound template, whose own Sync would
// end the batch early (and answer a Query the server, after an error in
// the batch, would skip without an answer).
func (m *maskedSession) query(msg []byte, inBatch bool) ([]byte, error) {
	sql, _, ok := cutNul(msg[5:])
	if !ok {
		return nil, &protocolError{"malformed Query message"}
	}
	if inBatch {
		// The server answers a Query inside an unfinished batch, or
		// skips it without an answer after an error in the batch, which
		// the proxy cannot know when it must count the sync point; and
		// it may not send statements of its own (a search_path re-read)
		// inside the client's batch. No driver mixes the protocols so.
		return nil, &protocolError{"a masked session may not send a simple Query inside an unfinished extended-protocol batch: send Sync first"}
	}
	m.lastSQL = sql
	if err := m.refreshPath(); err != nil {
		return nil, err
	}
	orig := sql
	sql, changed := m.rewriteSQL(sql, !inBatch)
	if m.lastErr == nil && m.bound != nil && !inBatch {
		return m.runBound(orig, m.bound, m.boundLits), nil
	}
	if !changed {
		return msg, nil
	}
	return (&pgproto3.Query{String: sql}).Encode(nil)
}

// errContextInBatch refuses a Parse that follows, in the same batch, a
// statement that may change search_path or the current role.
var errContextInBatch = &rewrite.Refusal{Rule: "context-in-batch", Message: "a statement that may change search_path or the role must be followed by Sync before the next Parse or Bind of a statement that resolves names in a masked session"}

// resolvesNoNames reports whether plan's statements look up no relation,
// function or type names.
func resolvesNoNames(plan *rewrite.Plan) bool {
	for _, st := range plan.Statements {
		switch st.Kind {
		case "TransactionStmt", "VariableSetStmt", "VariableShowStmt", "DiscardStmt":
		default:
			return false
		}
	}
	return true
}

// maxBoundStatements bounds the prepared statements a session keeps for
// statement templates; past it one is closed for each new one.
const maxBoundStatements = 256

// runBound returns the messages that run the text sql, answered by the
// template b, as the session's prepared statement for b with sql's
// literals as parameters: Parse (the first time), Bind, Describe, Execute
// and Sync. The server's ParseComplete, CloseComplete and BindComplete are
// swallowed, so the client sees what its Query would have produced:
// RowDescription, rows, CommandComplete, ReadyForQuery. The server parses
// and plans the masking sub-query once per session instead of once per
// text (rewrite/prepare.go says when the typing of the constants allows it).
func (m *maskedSession) runBound(sql string, b *rewrite.Bound, lits []rewrite.Literal) []byte {
	// The messages are written before the next one is read: the buffer is
	// the session's, reused (unless a long text made it large).
	out := m.boundBuf[:0]
	defer func() {
		if cap(out) <= 64<<10 {
			m.boundBuf = out[:0]
		}
	}()
	parse, closes := 0, 0
	// The parameters are typed like the literals of this text: texts of one
	// shape may differ in the kinds of their constants ('01' or 01, 1 or
	// 1.5), and each typing gets its own statement.
	sig := uint64(14695981039346656037)
	for _, l := range lits {
		sig ^= uint64(literalType(sql[l.Start:l.End]))
		sig *= 1099511628211
	}
	key := tplKey{id: b.ID, sig: sig}
	m.mu.Lock()
	if m.tplStmts == nil {
		m.tplStmts = map[tplKey]tplStmt{}
	}
	ts, ok := m.tplStmts[key]
	if ok && !ts.typedLike(sql, lits) {
		ok = false // a hash collision of two typings: prepare anew
	}
	if !ok {
		if len(m.tplStmts) >= maxBoundStatements {
			for k, old := range m.tplStmts {
				out, _ = (&pgproto3.Close{ObjectType: 'S', Name: old.name}).Encode(out)
				delete(m.tplStmts, k)
				closes++
				break
			}
		}
		m.tplSeq++
		ts = tplStmt{name: tplPrefix + strconv.FormatUint(m.tplSeq, 10), oids: make([]uint32, len(lits))}
		for i, l := range lits {
			ts.oids[i] = literalType(sql[l.Start:l.End])
		}
		m.tplStmts[key] = ts
		parse = 1
	}
	m.mu.Unlock()
	for range closes {
		m.next(answerClose)
	}
	if parse == 1 {
		m.next(answerParse)
	}
	m.next(answerBind)
	name := ts.name
	if parse == 1 {
		out, _ = (&pgproto3.Parse{Name: name, Query: b.SQL, ParameterOIDs: ts.oids}).Encode(out)
	}
	// Bind: unnamed portal, text parameters, text results.
	start := len(out)
	out = append(out, 'B', 0, 0, 0, 0, 0)
	out = append(out, name...)
	out = append(out, 0, 0, 0)
	out = binary.BigEndian.AppendUint16(out, uint16(len(lits)))
	for _, l := range lits {
		tok := sql[l.Start:l.End]
		if tok[0] == '\'' {
			// A plain string (standard_conforming_strings is pinned on):
			// only a doubled quote stands for one.
			v := tok[1 : len(tok)-1]
			n := len(v) - strings.Count(v, "''")
			out = binary.BigEndian.AppendUint32(out, uint32(n))
			for len(v) > 0 {
				i := strings.Index(v, "''")
				if i < 0 {
					out = append(out, v...)
					break
				}
				out = append(out, v[:i+1]...)
				v = v[i+2:]
			}
			continue
		}
		out = binary.BigEndian.AppendUint32(out, uint32(len(tok)))
		out = append(out, tok...)
	}
	out = append(out, 0, 0)
	putLength(out[start:])
	out = append(out, 'D', 0, 0, 0, 6, 'P', 0)
	out = append(out, 'E', 0, 0, 0, 9, 0, 0, 0, 0, 0)
	out = append(out, 'S', 0, 0, 0, 4)
	var lost func()
	if parse == 1 {
		lost = func() {
			// The Parse failed (say, in an aborted transaction): prepare
			// again next time.
			m.mu.Lock()
			if m.tplStmts[key].name == name {
				delete(m.tplStmts, key)
			}
			m.mu.Unlock()
		}
	}
	m.s.swallowBatch(swallowEntry{parse: parse, close: closes, bind: 1, lost: lost})
	return out
}

// portalInfo is what the proxy knows of a portal (see portals).
type portalInfo struct {
	policy string
	// changer: running it may change the context; copyFrom: it is a
	// COPY ... FROM STDIN.
	changer, copyFrom bool
}

// maxPortals bounds the portals map; past it the map is cleared (see
// portalBase).
const maxPortals = 10000

// openPortal records portal name, opened now under policy.
func (m *maskedSession) openPortal(name, policy string, changer, copyFrom bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.portals == nil || len(m.portals) >= maxPortals {
		m.portals = map[string]portalInfo{}
		m.portalBase = policy
	}
	m.setPortal(name, portalInfo{policy: policy, changer: changer, copyFrom: copyFrom}, true)
}

// stalePortal returns the refusal for running portal name under policy,
// nil when it may run; changer reports a portal whose statement may change
// the context.
func (m *maskedSession) stalePortal(name, policy string) (changer bool, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.portals[name]
	if !ok {
		p.policy = m.portalBase
		if m.portals == nil {
			p.policy = policy // no portal was opened yet
		}
	}
	if p.policy != policy {
		return false, &rewrite.Refusal{Rule: "stale-statement", Message: "portal or cursor " + strconv.Quote(name) + " was opened under another policy; open it again"}
	}
	return p.changer, nil
}

// execute checks an Execute message: a portal opened under another policy
// is refused (replaced by a Parse of the refusal marker), and one whose
// statement may change search_path or the role marks the context for
// reading again.
func (m *maskedSession) execute(msg []byte) ([]byte, error) {
	portal, _, ok := cutNul(msg[5:])
	if !ok {
		return nil, &protocolError{"malformed Execute message"}
	}
	changer, err := m.stalePortal(portal, m.currentPolicyHash())
	if err != nil {
		return m.refusedMessage(err)
	}
	if changer {
		m.dirty, m.changedInTx = true, true
	}
	m.mu.Lock()
	copyFrom := m.portals[portal].copyFrom
	m.mu.Unlock()
	if copyFrom {
		m.copyStart()
	}
	return msg, nil
}

// tplPrefix starts the names of the prepared statements the proxy makes
// for bound templates, and of the statement and portal of its context
// query (contextName). Masked clients may not name such a statement in
// any way (PREPARE, EXECUTE, DEALLOCATE, Parse, Bind, Describe, Close):
// they could run one prepared under an older policy or context, or take a
// name over so that the proxy's Bind runs the client's statement; nor
// open a portal of such a name (Bind, DECLARE), which would make the
// proxy's Bind of its context query fail.
const tplPrefix = "pgveil_tpl_"

// reservedName reports whether a prepared statement or portal name is the
// proxy's.
func reservedName(name string) bool { return strings.HasPrefix(name, tplPrefix) }

var errReservedName = &rewrite.Refusal{Rule: "reserved-name", Message: "prepared statement and portal names starting with " + tplPrefix + " are reserved for the proxy"}

// tplKey identifies a bound template's prepared statement: the template
// and a hash of its parameter types.
type tplKey struct{ id, sig uint64 }

// tplStmt is a prepared statement made for a bound template.
type tplStmt struct {
	name string
	oids []uint32
}

// typedLike reports whether the literals of sql have the statement's
// parameter types.
func (t tplStmt) typedLike(sql string, lits []rewrite.Literal) bool {
	if len(t.oids) != len(lits) {
		return false
	}
	for i, l := range lits {
		if literalType(sql[l.Start:l.End]) != t.oids[i] {
			return false
		}
	}
	return true
}

// literalType is the type a literal token has in PostgreSQL, as a bound
// parameter's type: 0 (to be inferred, like an untyped literal) for a
// string, int4, int8 or numeric for a number.
func literalType(tok string) uint32 {
	if tok[0] == '\'' {
		return 0
	}
	if !strings.ContainsAny(tok, ".eE") {
		if v, err := strconv.ParseInt(tok, 10, 64); err == nil {
			if v >= math.MinInt32 && v <= math.MaxInt32 {
				return 23 // int4
			}
			return 20 // int8
		}
	}
	return 1700 // numeric
}

// rewriteSQL returns the text to send for sql: the rewrite, the refusal
// marker, or sql itself (changed false).
func (m *maskedSession) rewriteSQL(sql string, bindOK bool) (string, bool) {
	out, plan, err := m.textFor(sql, bindOK)
	m.lastPlan, m.lastErr = plan, err
	if err != nil {
		return m.refuse(err), true
	}
	m.account(plan, true)
	return out, out != sql || plan.Rewritten
}

// textFor analyses sql and returns the text to send: the rewrite, with
// the ciphertexts of encrypted literals in place.
func (m *maskedSession) textFor(sql string, simple bool) (string, *rewrite.Plan, error) {
	plan, text, err := m.analyse(sql, simple)
	if err != nil {
		return "", nil, err
	}
	out := sql
	if plan.Rewritten {
		m.s.srv.cfg.Observer.Rewritten()
		out = text
	}
	if plan.Encrypts {
		if out, err = m.encryptLiterals(out, plan); err != nil {
			return "", plan, err
		}
	}
	return out, plan, nil
}

// bindEncrypted encrypts the parameters of a Bind whose statement stores
// them into (or compares them with) encrypted columns.
func (m *maskedSession) bindEncrypted(stmt string, msg []byte) ([]byte, error) {
	m.mu.Lock()
	enc := m.prepared[stmt].encrypt
	m.mu.Unlock()
	if len(enc) == 0 {
		return msg, nil
	}
	out, err := m.encryptBind(msg, enc)
	if err != nil {
		var ke *keyError
		if errors.As(err, &ke) {
			// The Bind becomes a failing Parse, so the server reports the
			// error in order and skips the rest of the batch.
			return m.refusedMessage(ke)
		}
		return nil, err
	}
	return out, nil
}

// parse rewrites an extended-protocol Parse message.
func (m *maskedSession) parse(msg []byte, atBoundary bool) ([]byte, error) {
	name, rest, ok := cutNul(msg[5:])
	if !ok {
		return nil, &protocolError{"malformed Parse message"}
	}
	sql, types, ok := cutNul(rest)
	if !ok {
		return nil, &protocolError{"malformed Parse message"}
	}
	m.lastName, m.lastSQL = name, sql
	m.next(answerParse)
	var (
		out  string
		plan *rewrite.Plan
		err  error
	)
	switch {
	case reservedName(name):
		err = errReservedName
	case atBoundary:
		if err := m.refreshPath(); err != nil {
			return nil, err
		}
		out, plan, err = m.textFor(sql, false)
	case m.dirty:
		// An earlier statement of this batch may change search_path or
		// the role, and what it changes to is known only once it ran:
		// analysing a statement that resolves names under the old context
		// could resolve them differently from the server, so it is
		// refused (fail closed). Statements that resolve no names
		// (transaction control, SET, SHOW, DISCARD) pass.
		out, plan, err = m.textFor(sql, false)
		if err == nil && !resolvesNoNames(plan) {
			out, plan, err = "", nil, errContextInBatch
		}
	default:
		out, plan, err = m.textFor(sql, false)
	}
	if err == nil {
		err = m.checkParamTypes(types)
	}
	sql0 := sql
	m.lastPlan, m.lastErr = plan, err
	changed := true
	switch {
	case err != nil:
		sql = m.refuse(err)
	case out != sql || plan.Rewritten:
		sql = out
	default:
		changed = false
	}
	if err == nil {
		m.account(plan, false)
	}
	m.mu.Lock()
	_, exists := m.prepared[name]
	m.mu.Unlock()
	if exists && name != "" {
		// The server refuses a second statement of the name (42P05) and
		// keeps the first: so do the books.
	} else if err != errReservedName {
		// A refused Parse is recorded too (its marker fails, so settle
		// undoes the record): until then a Bind of the name in the same
		// batch is skipped by the server anyway.
		m.remember(name, sql0, append([]byte(nil), types...), paramEncrypts(plan), plan != nil && resolvesNoNames(plan), plan != nil && changesContext(plan), copiesIn(plan))
	}
	if !changed {
		return msg, nil
	}
	return appendParse(make([]byte, 0, 5+len(name)+len(sql)+2+len(types)), name, sql, types), nil
}

// checkParamTypes refuses the parameter types of a Parse (the int16
// count and int32 OIDs after the query) that may run user code when a
// value is converted to them (rewrite.CheckParamTypes).
func (m *maskedSession) checkParamTypes(types []byte) error {
	if len(types) < 2 {
		return nil
	}
	n := int(binary.BigEndian.Uint16(types))
	if n == 0 || len(types) < 2+4*n {
		// A malformed list is the server's to reject.
		return nil
	}
	oids := make([]uint32, n)
	for i := range oids {
		oids[i] = binary.BigEndian.Uint32(types[2+4*i:])
	}
	rs, err := m.session()
	if err != nil {
		return &rewrite.Refusal{Rule: "unavailable", Message: "the policy or catalog is unavailable"}
	}
	return rewrite.CheckParamTypes(rs.Catalog, oids)
}

// putLength writes a message's length field from its size.
func putLength(msg []byte) {
	n := len(msg) - 1
	msg[1], msg[2], msg[3], msg[4] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
}

// serverError rewrites an ErrorResponse or NoticeResponse for a masked
// session: a refusal marker becomes the refusal, and every field that can
// quote data or SQL (detail, hint, context, internal query) is dropped
// (DESIGN.md §2 rule 5).
//
// refusal is the refusal a marker's error stands for, nil for any other
// message.
func (m *maskedSession) serverError(typ byte, msg []byte) (out []byte, refusal error, err error) {
	var e pgproto3.ErrorResponse
	if err := e.Decode(msg[5:]); err != nil {
		return nil, nil, &protocolError{"malformed error message from server"}
	}
	if typ == 'E' {
		if r := m.takeRefusal(&e); r != nil {
			code := codeInsufficientPrivilege
			var se *rewrite.SyntaxError
			var ke *keyError
			switch {
			case errors.As(r, &se):
				code = codeSyntaxError
			case errors.As(r, &ke):
				return errorMessage("ERROR", ke.code, ke.msg), r, nil
			}
			out := errorMessage("ERROR", code, r.Error())
			if se != nil {
				out = errorMessage("ERROR", code, se.Message)
			}
			return out, r, nil
		}
	}
	if m.raw {
		return msg, nil, nil
	}
	e.Detail, e.Hint, e.Where, e.InternalQuery, e.InternalPosition = "", "", "", "", 0
	if typ == 'N' {
		out, err = (*pgproto3.NoticeResponse)(&e).Encode(nil)
	} else {
		out, err = e.Encode(nil)
	}
	return out, nil, err
}
