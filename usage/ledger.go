package usage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for Config's zero values.
const (
	// DefaultFlushInterval is how often the ledger writes to its store
	// (the serve flag --usage-flush).
	DefaultFlushInterval = 10 * time.Second
	// DefaultFlushTimeout bounds one write to the store.
	DefaultFlushTimeout = 30 * time.Second
	// DefaultMaxPending is how many keys the ledger keeps for a failing
	// store before it drops deltas. One key is about 300 bytes, so the
	// default holds at most about 30 MB.
	DefaultMaxPending = 100_000
	// DefaultLogEvery is the least time between two log lines about a
	// failing store.
	DefaultLogEvery = time.Minute
)

// maxRoleSets bounds the role-set intern table; it is cleared when full.
const maxRoleSets = 4096

// closeRetry is the first pause between flush attempts in Close; it
// doubles up to closeRetryMax.
const (
	closeRetry    = 50 * time.Millisecond
	closeRetryMax = 2 * time.Second
)

// ErrClosed is returned by Flush and Close on a closed ledger.
var ErrClosed = errors.New("usage: ledger closed")

// Config configures a Ledger.
type Config struct {
	// Store receives the deltas. Required. The ledger does not close it.
	Store Store
	// FlushInterval is how often the flusher writes the accumulated deltas
	// to Store. 0 means DefaultFlushInterval; a negative value starts no
	// flusher, and only Flush and Close write (for tests and tools).
	FlushInterval time.Duration
	// FlushTimeout bounds one Store.Add by the flusher. 0 means
	// DefaultFlushTimeout.
	FlushTimeout time.Duration
	// MaxPending is how many keys may wait for a failing store; beyond it
	// deltas are dropped and counted. 0 means DefaultMaxPending.
	MaxPending int
	// Logger receives one line when a flush fails (at most one per
	// LogEvery, with the number of failures in between) and one when the
	// store recovers. nil discards.
	Logger *slog.Logger
	// LogEvery is the least time between two failure log lines. 0 means
	// DefaultLogEvery.
	LogEvery time.Duration
	// Observer, if non-nil, is told about every flush and the column use
	// it carried (for metrics).
	Observer Observer
	// Now returns the current time, for statements with a zero Time and for
	// flush timing. nil means time.Now.
	Now func() time.Time
}

// Observer receives the ledger's metrics. Its methods are called from the
// flusher goroutine (or the caller of Flush), never from Record, and must
// not block.
type Observer interface {
	// Flushed is called after every flush attempt.
	Flushed(FlushStats)
	// ColumnUse is called once per flush attempt for every (column,
	// treatment) that new statements touched since the previous attempt,
	// with the number of those statements. Deltas retried after a failure
	// are not reported again, so the sum over calls is the number of
	// statements recorded (dropped ones included).
	ColumnUse(schema, table, column string, t Treatment, statements int64)
}

// FlushStats describes one flush attempt.
type FlushStats struct {
	// Keys is the number of keys sent to the store.
	Keys int
	// Duration is how long Store.Add took.
	Duration time.Duration
	// Err is the store's error; nil on success.
	Err error
	// PendingKeys is the number of keys kept for the next attempt (0 on
	// success).
	PendingKeys int
	// DroppedKeys and DroppedStatements are what this attempt dropped
	// because more than MaxPending keys were pending.
	DroppedKeys, DroppedStatements int64
}

// sessKey is the session half of a counter key; Hour is Unix seconds.
// The ledger's maps are two-level (session, then column) so that Record
// hashes the session's strings once per statement, not once per column.
type sessKey struct {
	hour                       int64
	database, user, roles, app string
}

// colKey is the column half of a counter key.
type colKey struct {
	schema, table, column string
	treatment             Treatment
}

// counter is the in-memory form of Counts; times are Unix microseconds
// (the stores' precision).
type counter struct {
	statements, reads                                           int64
	output, filter, join, groupOrder, aggregateArg, writeTarget int64
	ok, failed, rows                                            int64
	lastSeen, lastRead                                          int64
}

func (c *counter) add(o *counter) {
	c.statements += o.statements
	c.reads += o.reads
	c.output += o.output
	c.filter += o.filter
	c.join += o.join
	c.groupOrder += o.groupOrder
	c.aggregateArg += o.aggregateArg
	c.writeTarget += o.writeTarget
	c.ok += o.ok
	c.failed += o.failed
	c.rows += o.rows
	c.lastSeen = max(c.lastSeen, o.lastSeen)
	c.lastRead = max(c.lastRead, o.lastRead)
}

// colCounters maps the columns of one session key to counters.
type colCounters map[colKey]*counter

// counters maps session keys, then columns, to counters.
type counters map[sessKey]colCounters

// mergeCopy adds src into dst, copying counters so that dst and src share
// none.
func (dst counters) mergeCopy(src counters) {
	for sk, cols := range src {
		d := dst[sk]
		if d == nil {
			d = make(colCounters, len(cols))
			dst[sk] = d
		}
		for ck, c := range cols {
			if x := d[ck]; x != nil {
				x.add(c)
			} else {
				cc := *c
				d[ck] = &cc
			}
		}
	}
}

// mergeMove adds src into dst; src must not be used afterwards (its
// counters may now be dst's).
func (dst counters) mergeMove(src counters) {
	for sk, cols := range src {
		d := dst[sk]
		if d == nil {
			dst[sk] = cols
			continue
		}
		for ck, c := range cols {
			if x := d[ck]; x != nil {
				x.add(c)
			} else {
				d[ck] = c
			}
		}
	}
}

// swap takes the shard's live counters and leaves it empty.
func (sh *shard) swap() counters {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	c := sh.live
	sh.live = nil
	sh.gen++
	return c
}

// copyLive returns a copy of the shard's live counters.
func (sh *shard) copyLive() counters {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	c := counters{}
	c.mergeCopy(sh.live)
	return c
}

// keys returns the number of (session, column) keys.
func (c counters) keys() int {
	n := 0
	for _, cols := range c {
		n += len(cols)
	}
	return n
}

// Ledger counts column use in memory and flushes it to a Store. It is safe
// for concurrent use.
type Ledger struct {
	cfg Config

	// flushMu serialises flushes.
	flushMu sync.Mutex

	mu     sync.Mutex
	closed bool
	live   counters // recorded since the last swap
	// shards hold what Session handles record, each under its own lock
	// so that sessions do not contend for mu; a flush swaps them out with
	// live. closedA is closed for them.
	shards  [numShards]shard
	nextSh  atomic.Uint32
	closedA atomic.Bool
	// sessions are the Session handles not yet ended, whose slots a flush
	// folds into the shards first.
	sessMu   sync.Mutex
	sessions map[*Session]struct{}
	inflight counters // being written by a flush
	pending  counters // kept after a failed flush, retried next time
	roleSets map[string]string
	roleBuf  []byte
	roleTmp  []string
	written  colCounters // per column and treatment, totals written
	stats    Stats

	// Flusher state, owned by the flusher (or Flush caller under flushMu).
	failures    int // failures since the last log line
	lastLog     time.Time
	failing     bool
	stop        chan struct{}
	flusherDone chan struct{}
}

// Stats are the ledger's running totals.
type Stats struct {
	// Flushes and Failures count successful and failed flush attempts.
	Flushes, Failures int64
	// KeysWritten and StatementsWritten count what reached the store
	// (statements counted once per column).
	KeysWritten, StatementsWritten int64
	// DroppedKeys and DroppedStatements count what was dropped because too
	// many keys were pending.
	DroppedKeys, DroppedStatements int64
	// LastFlush is when the last successful flush finished.
	LastFlush time.Time
	// LastError is the last flush error ("" after a success).
	LastError string
}

// New validates cfg and starts the ledger's flusher.
func New(cfg Config) (*Ledger, error) {
	if cfg.Store == nil {
		return nil, errors.New("usage: Config.Store is required")
	}
	if cfg.FlushInterval == 0 {
		cfg.FlushInterval = DefaultFlushInterval
	}
	if cfg.FlushTimeout < 0 {
		return nil, fmt.Errorf("usage: negative FlushTimeout %v", cfg.FlushTimeout)
	}
	if cfg.FlushTimeout == 0 {
		cfg.FlushTimeout = DefaultFlushTimeout
	}
	if cfg.MaxPending < 0 {
		return nil, fmt.Errorf("usage: negative MaxPending %d", cfg.MaxPending)
	}
	if cfg.MaxPending == 0 {
		cfg.MaxPending = DefaultMaxPending
	}
	if cfg.LogEvery <= 0 {
		cfg.LogEvery = DefaultLogEvery
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	l := &Ledger{
		cfg:         cfg,
		live:        counters{},
		sessions:    map[*Session]struct{}{},
		roleSets:    map[string]string{},
		written:     colCounters{},
		stop:        make(chan struct{}),
		flusherDone: make(chan struct{}),
	}
	if cfg.FlushInterval > 0 {
		go l.flusher()
	} else {
		close(l.flusherDone)
	}
	return l, nil
}

// Record counts one statement. It only updates in-memory counters and
// never waits on the store; in the steady state (keys already present) it
// does not allocate. Each column should appear once in st.Columns. Record
// after Close does nothing.
func (l *Ledger) Record(st *Statement) {
	if st == nil || len(st.Columns) == 0 {
		return
	}
	t := st.Time
	if t.IsZero() {
		t = l.cfg.Now()
	}
	sec := t.Unix()
	hour := sec - ((sec%3600)+3600)%3600
	micros := t.UnixMicro()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	sk := sessKey{hour: hour, database: st.Database, user: st.User, roles: l.roleSet(st.Roles), app: st.Application}
	cols := l.live[sk]
	if cols == nil {
		cols = make(colCounters, len(st.Columns))
		sk.database = strings.Clone(sk.database)
		sk.user = strings.Clone(sk.user)
		sk.app = strings.Clone(sk.app)
		l.live[sk] = cols
	}
	for i := range st.Columns {
		cu := &st.Columns[i]
		k := colKey{schema: cu.Schema, table: cu.Table, column: cu.Column, treatment: cu.Treatment}
		c := cols[k]
		if c == nil {
			c = &counter{}
			k.schema, k.table, k.column = strings.Clone(k.schema), strings.Clone(k.table), strings.Clone(k.column)
			cols[k] = c
		}
		c.count(cu.Clauses, st.Rows, st.OK, micros)
	}
}

// countN adds n statements that used a column in the clauses cl: ok of
// them succeeded, together they returned rows, and the latest ran at
// micros.
func (c *counter) countN(cl ClauseSet, n, ok, rows, micros int64) {
	c.statements += n
	if cl.Reads() {
		c.reads += n
		c.lastRead = max(c.lastRead, micros)
	}
	if cl&Output != 0 {
		c.output += n
		c.rows += rows
	}
	if cl&Filter != 0 {
		c.filter += n
	}
	if cl&Join != 0 {
		c.join += n
	}
	if cl&GroupOrder != 0 {
		c.groupOrder += n
	}
	if cl&AggregateArg != 0 {
		c.aggregateArg += n
	}
	if cl&WriteTarget != 0 {
		c.writeTarget += n
	}
	c.ok += ok
	c.failed += n - ok
	c.lastSeen = max(c.lastSeen, micros)
}

// count adds one statement that used a column in the clauses cl.
func (c *counter) count(cl ClauseSet, rows int64, ok bool, micros int64) {
	c.statements++
	if cl.Reads() {
		c.reads++
		c.lastRead = max(c.lastRead, micros)
	}
	if cl&Output != 0 {
		c.output++
		c.rows += rows
	}
	if cl&Filter != 0 {
		c.filter++
	}
	if cl&Join != 0 {
		c.join++
	}
	if cl&GroupOrder != 0 {
		c.groupOrder++
	}
	if cl&AggregateArg != 0 {
		c.aggregateArg++
	}
	if cl&WriteTarget != 0 {
		c.writeTarget++
	}
	if ok {
		c.ok++
	} else {
		c.failed++
	}
	c.lastSeen = max(c.lastSeen, micros)
}

// numShards is how many independently locked parts Session handles
// record into (round robin).
const numShards = 8

// shard is one part of the live counters.
type shard struct {
	mu   sync.Mutex
	live counters
	gen  uint64 // counts swaps of live (Session memos follow it)
	_    [64]byte
}

// maxMemo bounds a Session's memo of statement shapes; it is cleared when
// full.
const maxMemo = 1024

// Session is one client session's handle on a Ledger. Its Record counts
// like Ledger.Record, but the handle knows the session's identity already,
// and it adds a statement to a count of its own when the session ran the
// same statement shape recently: the ledger's per-column counters are
// updated when the shape leaves the handle's few slots, at every flush
// (and Snapshot), and at End. A statement therefore costs a lock and a
// few additions on the handle, however many columns it touched. A Session
// is for one goroutine at a time; End it when its session ends (a Session
// never ended stays registered with the ledger, its counts still flushed).
type Session struct {
	// mu guards the slots and ended: Record takes it, and so do the
	// ledger's flushes (foldSessions) and End. Lock order: the ledger's
	// sessMu, then mu, then the shard's mu. They come first, with the
	// ledger: a statement's Record then touches two cache lines of the
	// handle (the first slot ends in the second).
	mu    sync.Mutex
	n     int // slots in use, oldest first
	ended bool
	l     *Ledger
	slots [numSlots]slot

	sh *shard
	sk sessKey // the identity; hour is set per use

	// The fields below are used under the shard's lock.
	gen  uint64 // the shard's gen the memo belongs to
	memo map[shapeKey][]*counter
	cols colCounters // the shard's live counters of (sk, hour)
}

// numSlots is how many statement shapes a Session counts on its own.
const numSlots = 4

// slot counts the statements of one shape (and hour) that a Session has
// not yet added to the ledger's counters.
type slot struct {
	key    shapeKey
	cols   []ColumnUse
	hour   int64
	n, ok  int64
	rows   int64
	micros int64 // the latest statement's time
}

// shapeKey identifies a statement shape by its columns slice.
type shapeKey struct {
	first *ColumnUse
	n     int
}

// Session returns a handle for recording the statements of one session.
// Roles are as in Statement.
func (l *Ledger) Session(database, user string, roles []string, application string) *Session {
	l.mu.Lock()
	r := l.roleSet(roles)
	l.mu.Unlock()
	sh := &l.shards[l.nextSh.Add(1)%numShards]
	s := &Session{l: l, sh: sh, memo: map[shapeKey][]*counter{},
		sk: sessKey{database: strings.Clone(database), user: strings.Clone(user), roles: r, app: strings.Clone(application)}}
	l.sessMu.Lock()
	l.sessions[s] = struct{}{}
	l.sessMu.Unlock()
	return s
}

// Record counts one statement of the session that touched cols, started at
// t (zero means now), returned rows and succeeded (ok) or not. cols is
// remembered by the address of its first element: the caller must not
// modify a slice it has passed (the usual source is a per-plan cache of
// immutable slices). Each column should appear once. Record after the
// ledger's Close does nothing.
func (s *Session) Record(t time.Time, cols []ColumnUse, rows int64, ok bool) {
	if len(cols) == 0 {
		return
	}
	l := s.l
	if t.IsZero() {
		t = l.cfg.Now()
	}
	micros := t.UnixMicro()
	sec := micros / 1e6
	if micros%1e6 < 0 {
		sec-- // before 1970: the second that holds it
	}
	hour := sec - ((sec%3600)+3600)%3600
	k := shapeKey{&cols[0], len(cols)}
	var okN int64
	if ok {
		okN = 1
	}
	s.mu.Lock()
	if l.closedA.Load() {
		s.mu.Unlock()
		return
	}
	if s.ended {
		s.count(slot{key: k, cols: cols, hour: hour, n: 1, ok: okN, rows: rows, micros: micros})
		s.mu.Unlock()
		return
	}
	var p *slot
	for i := range s.n {
		if q := &s.slots[i]; q.key == k && q.hour == hour {
			p = q
			break
		}
	}
	if p == nil {
		if s.n == numSlots {
			s.count(s.slots[0])
			copy(s.slots[:], s.slots[1:])
			s.n--
		}
		p = &s.slots[s.n]
		*p = slot{key: k, cols: cols, hour: hour}
		s.n++
	}
	p.n++
	p.ok += okN
	p.rows += rows
	p.micros = max(p.micros, micros)
	s.mu.Unlock()
}

// fold adds what the slots count to the ledger's counters and empties
// them. The caller holds s.mu.
func (s *Session) fold() {
	for i := range s.n {
		s.count(s.slots[i])
		s.slots[i] = slot{}
	}
	s.n = 0
}

// End adds what the handle still counts to the ledger and unregisters it;
// a Record after End counts straight into the ledger.
func (s *Session) End() {
	s.mu.Lock()
	s.fold()
	s.ended = true
	s.mu.Unlock()
	l := s.l
	l.sessMu.Lock()
	delete(l.sessions, s)
	l.sessMu.Unlock()
}

// count adds the statements of p to the ledger's counters. The caller
// holds s.mu.
func (s *Session) count(p slot) {
	if p.n == 0 {
		return
	}
	sh := s.sh
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if s.gen != sh.gen || s.sk.hour != p.hour || s.cols == nil {
		s.sk.hour = p.hour
		if sh.live == nil {
			sh.live = counters{}
		}
		s.cols = sh.live[s.sk]
		if s.cols == nil {
			s.cols = make(colCounters, len(p.cols))
			sh.live[s.sk] = s.cols
		}
		s.gen = sh.gen
		clear(s.memo)
	}
	cs := s.memo[p.key]
	if cs == nil {
		if len(s.memo) >= maxMemo {
			clear(s.memo)
		}
		cs = make([]*counter, len(p.cols))
		for i := range p.cols {
			cu := &p.cols[i]
			ck := colKey{schema: cu.Schema, table: cu.Table, column: cu.Column, treatment: cu.Treatment}
			c := s.cols[ck]
			if c == nil {
				c = &counter{}
				ck.schema, ck.table, ck.column = strings.Clone(ck.schema), strings.Clone(ck.table), strings.Clone(ck.column)
				s.cols[ck] = c
			}
			cs[i] = c
		}
		s.memo[p.key] = cs
	}
	for i, c := range cs {
		c.countN(p.cols[i].Clauses, p.n, p.ok, p.rows, p.micros)
	}
}

// foldSessions adds what every registered Session counts to the ledger's
// counters.
func (l *Ledger) foldSessions() {
	l.sessMu.Lock()
	defer l.sessMu.Unlock()
	for s := range l.sessions {
		s.mu.Lock()
		s.fold()
		s.mu.Unlock()
	}
}

// roleSet returns the canonical, interned form of roles: sorted,
// deduplicated and joined by ",". The caller holds l.mu.
func (l *Ledger) roleSet(roles []string) string {
	switch len(roles) {
	case 0:
		return ""
	case 1:
		if s, ok := l.roleSets[roles[0]]; ok {
			return s
		}
	}
	if !slices.IsSorted(roles) {
		l.roleTmp = append(l.roleTmp[:0], roles...)
		slices.Sort(l.roleTmp)
		roles = l.roleTmp
	}
	b := l.roleBuf[:0]
	for i, r := range roles {
		if i > 0 && r == roles[i-1] {
			continue
		}
		if len(b) > 0 {
			b = append(b, ',')
		}
		b = append(b, r...)
	}
	l.roleBuf = b
	if s, ok := l.roleSets[string(b)]; ok {
		return s
	}
	if len(l.roleSets) >= maxRoleSets {
		clear(l.roleSets)
	}
	s := string(b)
	l.roleSets[s] = s
	return s
}

// flusher writes the deltas every FlushInterval until Close.
func (l *Ledger) flusher() {
	defer close(l.flusherDone)
	tick := time.NewTicker(l.cfg.FlushInterval)
	defer tick.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-tick.C:
			ctx, cancel := context.WithTimeout(context.Background(), l.cfg.FlushTimeout)
			_ = l.flush(ctx) // Failures are logged, counted and retried.
			cancel()
		}
	}
}

// Flush writes everything recorded so far (and any deltas kept from
// failed flushes) to the store now. On failure the deltas are kept for the
// next flush, up to MaxPending keys.
func (l *Ledger) Flush(ctx context.Context) error {
	l.mu.Lock()
	closed := l.closed
	l.mu.Unlock()
	if closed {
		return ErrClosed
	}
	return l.flush(ctx)
}

// flush swaps the live counters out and writes them with the pending ones.
func (l *Ledger) flush(ctx context.Context) error {
	l.flushMu.Lock()
	defer l.flushMu.Unlock()

	l.foldSessions()
	l.mu.Lock()
	fresh := l.live
	l.live = make(counters, len(fresh))
	for i := range l.shards {
		fresh.mergeMove(l.shards[i].swap())
	}
	batch := fresh
	if len(l.pending) > 0 {
		batch = l.pending
		l.pending = nil
		// fresh is still reported to the observer below, so merge copies.
		batch.mergeCopy(fresh)
	}
	l.inflight = batch
	l.mu.Unlock()

	if o := l.cfg.Observer; o != nil {
		reportColumnUse(o, fresh)
	}
	if len(batch) == 0 {
		l.mu.Lock()
		l.inflight = nil
		l.mu.Unlock()
		return nil
	}

	rows := toRows(batch)
	start := time.Now()
	err := l.cfg.Store.Add(ctx, rows)
	fs := FlushStats{Keys: len(rows), Duration: time.Since(start), Err: err}

	l.mu.Lock()
	l.inflight = nil
	if err == nil {
		l.stats.Flushes++
		l.stats.KeysWritten += int64(len(rows))
		l.stats.LastFlush = l.cfg.Now()
		l.stats.LastError = ""
		for _, cols := range batch {
			for ck, c := range cols {
				l.stats.StatementsWritten += c.statements
				if d := l.written[ck]; d != nil {
					d.add(c)
				} else {
					cc := *c
					l.written[ck] = &cc
				}
			}
		}
	} else {
		l.stats.Failures++
		l.stats.LastError = err.Error()
		// Keep the batch for the next flush, which merges in whatever was
		// recorded meanwhile; beyond MaxPending keys, drop (map order is
		// as good as any: every key is a loss).
		n := batch.keys()
		for sk, cols := range batch {
			for ck, c := range cols {
				if n <= l.cfg.MaxPending {
					break
				}
				fs.DroppedKeys++
				fs.DroppedStatements += c.statements
				delete(cols, ck)
				n--
			}
			if len(cols) == 0 {
				delete(batch, sk)
			}
		}
		l.pending = batch
		l.stats.DroppedKeys += fs.DroppedKeys
		l.stats.DroppedStatements += fs.DroppedStatements
		fs.PendingKeys = n
	}
	l.mu.Unlock()

	l.logFlush(fs)
	if o := l.cfg.Observer; o != nil {
		o.Flushed(fs)
	}
	if err != nil {
		return fmt.Errorf("usage: flush %d keys: %w", len(rows), err)
	}
	return nil
}

// logFlush writes a rate-limited line about a failing store, and one when
// it recovers. The caller holds flushMu.
func (l *Ledger) logFlush(fs FlushStats) {
	now := time.Now()
	if fs.Err == nil {
		if l.failing {
			l.cfg.Logger.Info("usage store recovered", "keys", fs.Keys, "failures", l.failures)
		}
		l.failing = false
		l.failures = 0
		return
	}
	l.failing = true
	l.failures++
	if !l.lastLog.IsZero() && now.Sub(l.lastLog) < l.cfg.LogEvery {
		return
	}
	l.cfg.Logger.Warn("usage store write failed; keeping the counts for the next flush",
		"kind", "usage_flush", "err", fs.Err, "pending_keys", fs.PendingKeys,
		"failures", l.failures, "dropped_keys", fs.DroppedKeys)
	l.lastLog = now
	l.failures = 0
}

// reportColumnUse tells o the statements per (column, treatment) in c.
func reportColumnUse(o Observer, c counters) {
	sums := map[colKey]int64{}
	for _, cols := range c {
		for k, v := range cols {
			sums[k] += v.statements
		}
	}
	for k, n := range sums {
		o.ColumnUse(k.schema, k.table, k.column, k.treatment, n)
	}
}

// Close stops the flusher and flushes everything recorded, retrying a
// failing store until ctx is done. It does not close the store. After
// Close, Record does nothing. If the deltas cannot be written before ctx
// ends, Close returns an error saying how many keys were lost.
func (l *Ledger) Close(ctx context.Context) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	l.mu.Unlock()
	close(l.stop)
	<-l.flusherDone
	l.mu.Lock()
	l.closed = true // Record stops counting; Flush refuses from here on.
	l.closedA.Store(true)
	l.mu.Unlock()

	wait := closeRetry
	for {
		err := l.flush(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			l.mu.Lock()
			lost := len(l.pending)
			l.mu.Unlock()
			return fmt.Errorf("usage: close: %d keys not written: %w", lost, err)
		case <-time.After(wait):
		}
		wait = min(2*wait, closeRetryMax)
	}
}

// Stats returns the ledger's running totals.
func (l *Ledger) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stats
}

// Snapshot is the ledger's state for the admin console's SHOW USAGE.
type Snapshot struct {
	// Unwritten are the counts not yet in the store (recorded, being
	// written, or kept after a failure), one Row per key, sorted.
	Unwritten []Row
	// Columns sums, per column and treatment, what is unwritten and what
	// this ledger has written since it started, sorted.
	Columns []ColumnTotal
	// Stats are the ledger's running totals.
	Stats Stats
}

// ColumnTotal is one column's use with one treatment.
type ColumnTotal struct {
	Schema, Table, Column string
	Treatment             Treatment
	Unwritten, Written    Counts
}

// Snapshot returns a copy of the ledger's current counts.
func (l *Ledger) Snapshot() Snapshot {
	l.foldSessions()
	l.mu.Lock()
	all := counters{}
	for _, src := range []counters{l.pending, l.inflight, l.live} {
		all.mergeCopy(src)
	}
	for i := range l.shards {
		all.mergeMove(l.shards[i].copyLive())
	}
	written := make(colCounters, len(l.written))
	for k, c := range l.written {
		cc := *c
		written[k] = &cc
	}
	s := Snapshot{Stats: l.stats}
	l.mu.Unlock()

	s.Unwritten = toRows(all)
	cols := map[colKey]*ColumnTotal{}
	get := func(k colKey) *ColumnTotal {
		ct := cols[k]
		if ct == nil {
			ct = &ColumnTotal{Schema: k.schema, Table: k.table, Column: k.column, Treatment: k.treatment}
			cols[k] = ct
		}
		return ct
	}
	for _, r := range s.Unwritten {
		ct := get(colKey{schema: r.Schema, table: r.Table, column: r.Column, treatment: r.Treatment})
		ct.Unwritten.Add(&r.Counts)
	}
	for k, c := range written {
		ct := get(k)
		cnt := c.counts()
		ct.Written.Add(&cnt)
	}
	for _, ct := range cols {
		s.Columns = append(s.Columns, *ct)
	}
	slices.SortFunc(s.Columns, func(a, b ColumnTotal) int {
		return cmpColumn(a.Schema, a.Table, a.Column, a.Treatment, b.Schema, b.Table, b.Column, b.Treatment)
	})
	return s
}

func cmpColumn(as, at, ac string, atr Treatment, bs, bt, bc string, btr Treatment) int {
	if c := strings.Compare(as, bs); c != 0 {
		return c
	}
	if c := strings.Compare(at, bt); c != 0 {
		return c
	}
	if c := strings.Compare(ac, bc); c != 0 {
		return c
	}
	return int(atr) - int(btr)
}

// counts converts c to Counts.
func (c *counter) counts() Counts {
	out := Counts{
		Statements: c.statements, Reads: c.reads,
		Output: c.output, Filter: c.filter, Join: c.join, GroupOrder: c.groupOrder,
		AggregateArg: c.aggregateArg, WriteTarget: c.writeTarget,
		OK: c.ok, Failed: c.failed, Rows: c.rows,
	}
	if c.lastSeen != 0 {
		out.LastSeen = time.UnixMicro(c.lastSeen).UTC()
	}
	if c.lastRead != 0 {
		out.LastRead = time.UnixMicro(c.lastRead).UTC()
	}
	return out
}

// toRows converts counters to rows sorted by key.
func toRows(c counters) []Row {
	rows := make([]Row, 0, c.keys())
	for sk, cols := range c {
		for k, v := range cols {
			rows = append(rows, Row{
				Key: Key{
					Hour: time.Unix(sk.hour, 0).UTC(), Database: sk.database, User: sk.user, Roles: sk.roles,
					Application: sk.app, Schema: k.schema, Table: k.table, Column: k.column, Treatment: k.treatment,
				},
				Counts: v.counts(),
			})
		}
	}
	SortRows(rows)
	return rows
}

// SortRows sorts rows by key: hour, database, user, roles, application,
// column, treatment.
func SortRows(rows []Row) {
	slices.SortFunc(rows, func(a, b Row) int { return CompareKeys(&a.Key, &b.Key) })
}

// CompareKeys orders keys for SortRows.
func CompareKeys(a, b *Key) int {
	if c := a.Hour.Compare(b.Hour); c != 0 {
		return c
	}
	for _, p := range [...][2]string{
		{a.Database, b.Database}, {a.User, b.User}, {a.Roles, b.Roles}, {a.Application, b.Application},
	} {
		if c := strings.Compare(p[0], p[1]); c != 0 {
			return c
		}
	}
	return cmpColumn(a.Schema, a.Table, a.Column, a.Treatment, b.Schema, b.Table, b.Column, b.Treatment)
}
