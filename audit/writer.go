package audit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Defaults for the zero values of Config.
const (
	defaultQueueSize     = 131072
	defaultKeep          = 10
	defaultRetryInterval = time.Second
)

// flushSize is the buffer size at which the writer writes to the file even
// while more records are queued.
const flushSize = 64 << 10

// fileCheckEvery is how often the writer checks that Path is still the
// file it writes to.
const fileCheckEvery = time.Second

// logEvery rate-limits the writer's log lines about losses and errors.
const logEvery = 10 * time.Second

// Errors callers branch on.
var (
	// ErrClosed is returned by Flush and Close on a closed Writer.
	ErrClosed = errors.New("audit: writer closed")
)

// Config configures a Writer.
type Config struct {
	// Path is the log file; required. It is created with mode 0600 and
	// appended to; an existing log's chain is continued.
	Path string
	// Key is the HMAC-SHA-256 key; nil writes lines without an hmac.
	Key []byte
	// KeyFile is read with LoadKey when Key is nil; "" means no key.
	KeyFile string
	// MaxSize is the size in bytes after which the log is rotated
	// (Path → Path.1 → Path.2 ...); zero never rotates.
	MaxSize int64
	// Keep is how many rotated files are kept; zero means 10. The oldest
	// beyond it is deleted.
	Keep int
	// QueueSize is how many records may wait for the writer; zero means
	// 131072 (memory is taken only as a backlog needs it). From 1024 on,
	// the loop sessions' shard (and Write's) holds half of it and the
	// other sessions' shards the other half (shardLimit).
	QueueSize int
	// OnFull is what happens when the queue is full or the disk refuses
	// a write; the zero value is OnFullDrop.
	OnFull OnFull
	// FlushInterval is how long buffered lines may wait for more before
	// they are written; zero writes as soon as the queue is empty.
	FlushInterval time.Duration
	// RetryInterval is how often a failing log is tried again; zero means
	// one second.
	RetryInterval time.Duration
	// Observer receives counts for metrics; nil means none.
	Observer Observer
	// Logger receives the writer's (rate-limited) warnings and errors;
	// nil discards them.
	Logger *slog.Logger
}

// Observer receives the writer's events, for metrics. Its methods are
// called from Write and from the writer's goroutine, so they must be safe
// for concurrent use and fast.
type Observer interface {
	// Written counts statement lines that reached the file.
	Written(n int)
	// Dropped counts records lost (queue full, write error, close timeout).
	Dropped(n int)
	// Error counts a failed write or rotation by kind: "enospc", "eio",
	// "edquot", "efbig", "io", "rotate", "reopen" (the log was moved or
	// deleted under the writer).
	Error(kind string)
	// Rotated counts rotations.
	Rotated()
}

type noObserver struct{}

func (noObserver) Written(int)  {}
func (noObserver) Dropped(int)  {}
func (noObserver) Error(string) {}
func (noObserver) Rotated()     {}

// Stats are a Writer's counters since New.
type Stats struct {
	Written   uint64 // statement lines written to the file
	Markers   uint64 // gap and torn marker lines written to the file
	Dropped   uint64 // records lost: queue full, write errors, close timeout
	Errors    uint64 // failed writes, truncations and rotations
	Rotations uint64 // completed rotations
}

// Loss reasons, as written in a gap marker's reason.
const (
	reasonQueue = 1 << iota // the queue was full
	reasonIO                // the file could not be written
	reasonClose             // Close gave up waiting
)

// reasonText returns the reason member of a gap marker for a set of
// reasons.
func reasonText(r int) string {
	var s string
	for _, p := range []struct {
		bit  int
		text string
	}{{reasonQueue, "queue full"}, {reasonIO, "write error"}, {reasonClose, "close timeout"}} {
		if r&p.bit != 0 {
			if s != "" {
				s += ", "
			}
			s += p.text
		}
	}
	return s
}

// queueShard is one shard of the queue. Writes waiting for room
// (OnFullBlock) wait on space and are counted in waiting.
type queueShard struct {
	mu      sync.Mutex
	space   sync.Cond
	batch   []queued
	waiting int
	spare   []queued // the goroutine's: the batch it took last, emptied
	// limit is how many statements the shard holds at most; the writer
	// goroutine is woken when it holds kickAt.
	limit, kickAt int
	_             [64]byte
}

// queued is a Statement in the queue, in 48 bytes rather than 104: the
// queue is written by the sessions' threads and read by the writer's, so
// every cache line of it moves between cores once per use, and that
// transfer is most of what WriteStatement costs. The time is kept in
// nanoseconds since 1970 (the line is written in UTC); what only errors
// and refusals have is behind a pointer.
type queued struct {
	nanos    int64
	session  *Session
	shape    *Shape
	rows     int64
	duration time.Duration
	rare     *rareFields // nil: outcome ok, no SQLSTATE, no rule
}

// rareFields are the members of a queued statement that a successful one
// does not have.
type rareFields struct {
	outcome        Outcome
	sqlState, rule string
}

// statement returns q as a Statement.
func (q *queued) statement() Statement {
	st := Statement{Time: time.Unix(0, q.nanos), Session: q.session, Shape: q.shape, Rows: q.rows, Duration: q.duration, Outcome: OutcomeOK}
	if r := q.rare; r != nil {
		st.Outcome, st.SQLState, st.Rule = r.outcome, r.sqlState, r.rule
	}
	return st
}

// queueShards is how many shards a queue of size n has: one for small
// queues (tests), eight from 1024 on. Shard 0 takes the statements of
// Write and of loop sessions (NewLoopSession) and holds half of n; the
// others share the rest (shardLimit).
func queueShards(n int) int {
	if n < 1024 {
		return 1
	}
	return 8
}

// prefaultSlots is how many queue slots WriteStatement brings into its
// core's cache at a time, ahead of use.
const prefaultSlots = 16

// shardLimit is how many statements shard i of a queue of size n in
// shards holds.
func shardLimit(i, n, shards int) int {
	switch {
	case shards == 1:
		return n
	case i == 0:
		return n / 2
	}
	return n / 2 / (shards - 1)
}

// pending counts what the unwritten buffer holds.
type pending struct {
	stmts   int
	markers int
	lost    int64 // records counted by gap markers
	reasons int
	torn    int64 // bytes counted by torn markers
}

func (p *pending) add(q pending) {
	p.stmts += q.stmts
	p.markers += q.markers
	p.lost += q.lost
	p.reasons |= q.reasons
	p.torn += q.torn
}

// Writer appends records to the audit log from one goroutine. Write may be
// called from any goroutine; Close must be called once at shutdown.
type Writer struct {
	cfg Config
	obs Observer
	log *slog.Logger

	// The queue, in shards: WriteStatement appends to the batch of the
	// statement's session's shard under that shard's lock (so that
	// sessions on different threads rarely contend), or of shard 0 for
	// the sessions of a loop and for Write (NewLoopSession), and wakes
	// the writer goroutine (kick) only when the batch becomes non-empty
	// or reaches its kickAt, so that the goroutine wakes a few times per
	// FlushInterval rather than once per statement.
	shards []queueShard
	kick   chan struct{}
	merge  []int // the goroutine's: merge positions per shard
	live   []int // the goroutine's: the shards takeBatch merges

	flushReq  chan chan error
	closing   chan struct{}
	abort     chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	abortOnce sync.Once
	stopping  atomic.Bool
	queueLost atomic.Int64 // dropped by Write, not yet seen by the goroutine

	written, markers, dropped, errs, rotations atomic.Uint64

	headMu sync.Mutex
	head   head // the last line on disk

	closeErr error // set by the goroutine before done is closed

	syncs sync.WaitGroup // background syncs of rotated files

	// The fields below belong to the writer goroutine (and to New).
	f           *os.File
	size        int64 // bytes of the current file that are written
	cache       cacheRelease
	chain       *chain
	committed   head // chain position at the end of what is written
	buf         []byte
	inBuf       pending
	pendingLost int64 // lost records no gap marker counts yet
	pendingWhy  int
	pendingTorn int64
	failing     bool // the last write failed
	lastErr     error
	lastTry     time.Time
	needTrunc   bool // a partial write must be cut off before the next
	aborted     bool
	rotateAfter time.Time // no rotation attempt before, after a failure
	lastCheck   time.Time // when checkFile last ran
	errLog      limiter
	lossLog     limiter
	okLog       limiter
}

// New opens (or creates) the log, continues its chain, and starts the
// writer goroutine. A torn last line is truncated and a torn marker is the
// first line written.
func New(cfg Config) (*Writer, error) {
	if cfg.Path == "" {
		return nil, errors.New("audit: missing Path")
	}
	if cfg.Key != nil && cfg.KeyFile != "" {
		return nil, errors.New("audit: Key and KeyFile are exclusive")
	}
	if cfg.MaxSize < 0 || cfg.Keep < 0 || cfg.QueueSize < 0 || cfg.FlushInterval < 0 || cfg.RetryInterval < 0 {
		return nil, errors.New("audit: MaxSize, Keep, QueueSize, FlushInterval and RetryInterval must not be negative")
	}
	if cfg.OnFull != OnFullDrop && cfg.OnFull != OnFullBlock {
		return nil, fmt.Errorf("audit: unknown OnFull %v", cfg.OnFull)
	}
	if cfg.Key != nil && len(cfg.Key) < MinKeySize {
		return nil, fmt.Errorf("audit: key is %d bytes, want at least %d", len(cfg.Key), MinKeySize)
	}
	if cfg.KeyFile != "" {
		key, err := LoadKey(cfg.KeyFile)
		if err != nil {
			return nil, err
		}
		cfg.Key = key
	}
	if cfg.Keep == 0 {
		cfg.Keep = defaultKeep
	}
	if cfg.QueueSize == 0 {
		cfg.QueueSize = defaultQueueSize
	}
	if cfg.RetryInterval == 0 {
		cfg.RetryInterval = defaultRetryInterval
	}
	w := &Writer{
		cfg:      cfg,
		obs:      cfg.Observer,
		log:      cfg.Logger,
		kick:     make(chan struct{}, 1),
		flushReq: make(chan chan error),
		closing:  make(chan struct{}),
		abort:    make(chan struct{}),
		done:     make(chan struct{}),
		chain:    newChain(cfg.Key),
		buf:      make([]byte, 0, flushSize+4096),
	}
	w.shards = make([]queueShard, queueShards(cfg.QueueSize))
	w.merge = make([]int, len(w.shards))
	for i := range w.shards {
		q := &w.shards[i]
		q.space.L = &q.mu
		q.limit = shardLimit(i, cfg.QueueSize, len(w.shards))
		q.kickAt = max(1, q.limit/2)
	}
	if w.obs == nil {
		w.obs = noObserver{}
	}
	if w.log == nil {
		w.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	f, size, h, torn, err := resume(cfg.Path)
	if err != nil {
		return nil, err
	}
	w.f, w.size, w.committed, w.head = f, size, h, h
	w.cache.reset(size)
	w.chain.seq, w.chain.hash = h.seq, h.hash
	if torn > 0 {
		w.pendingTorn = torn
		w.log.Warn("audit log had a torn last line; truncated it and will write a torn marker",
			"path", cfg.Path, "torn_bytes", torn)
	}
	go w.run()
	return w, nil
}

// Write hands r to the writer and returns at once; it does not keep r.
// It encodes the session and shape members of r for its own use: callers
// that write many statements of the same session or shape should encode
// those once and call WriteStatement. When the queue is full, r is dropped
// and counted (OnFullDrop) or Write waits for room (OnFullBlock). After
// Close, r is dropped and counted.
func (w *Writer) Write(r *Record) {
	st := statementOf(r)
	w.WriteStatement(&st)
}

// WriteStatement hands a copy of st to the writer and returns at once
// (a zero Time is set to now). When the queue is full, the statement is
// dropped and counted (OnFullDrop) or WriteStatement waits for room
// (OnFullBlock). After Close, it is dropped and counted. For a statement
// with outcome ok and no SQLSTATE or rule it does not allocate (once the
// queue has grown to its working size); the other members of an error or
// a refusal take one small allocation.
func (w *Writer) WriteStatement(st *Statement) {
	q := &w.shards[0]
	if st.Session != nil && st.Session.shard != 0 && len(w.shards) > 1 {
		q = &w.shards[1+(st.Session.shard-1)%uint32(len(w.shards)-1)]
	}
	q.mu.Lock()
	if w.stopping.Load() {
		q.mu.Unlock()
		w.drop()
		return
	}
	for len(q.batch) >= q.limit {
		if w.cfg.OnFull == OnFullDrop {
			q.mu.Unlock()
			w.drop()
			return
		}
		q.waiting++
		w.wake()
		q.space.Wait()
		q.waiting--
	}
	q.batch = append(q.batch, queued{session: st.Session, shape: st.Shape, rows: st.Rows, duration: st.Duration})
	n := len(q.batch)
	e := &q.batch[n-1]
	if st.Time.IsZero() {
		e.nanos = time.Now().UnixNano()
	} else {
		e.nanos = st.Time.UnixNano()
	}
	if st.Outcome != OutcomeOK || st.SQLState != "" || st.Rule != "" {
		e.rare = &rareFields{outcome: st.Outcome, sqlState: st.SQLState, rule: st.Rule}
	}
	if n%prefaultSlots == 1 && n < cap(q.batch) {
		// The next slots' memory was last written by the writer's
		// goroutine, on another core, when it emptied them: writing them
		// one at a time would wait for each cache line in turn (at the
		// Unlock below). Writing the group's lines now, together, waits
		// about as long as for one.
		clear(q.batch[n:min(n+prefaultSlots, cap(q.batch))])
	}
	q.mu.Unlock()
	if n == 1 || n == q.kickAt {
		w.wake()
	}
}

// wake tells the writer goroutine that the batch needs it.
func (w *Writer) wake() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// takeBatch encodes every statement queued now into the buffer, and makes
// room for Writes waiting for it. The shards' batches are merged by
// statement time (each shard's order is kept).
func (w *Writer) takeBatch() {
	for i := range w.shards {
		q := &w.shards[i]
		q.mu.Lock()
		b := q.batch
		q.batch = q.spare[:0]
		if q.waiting > 0 {
			q.space.Broadcast()
		}
		q.mu.Unlock()
		q.spare = b
	}
	// The shards that hold statements, usually one (a busy io_uring
	// loop's) or a few: the merge looks at those only.
	live := w.live[:0]
	for i := range w.shards {
		if len(w.shards[i].spare) > 0 {
			live = append(live, i)
		}
	}
	w.live = live
	if len(live) == 1 {
		b := w.shards[live[0]].spare
		for i := range b {
			st := b[i].statement()
			w.take(&st)
		}
	} else if len(live) > 1 {
		pos := w.merge
		clear(pos)
		for {
			best := -1
			for _, i := range live {
				b := w.shards[i].spare
				if pos[i] < len(b) && (best < 0 || b[pos[i]].nanos < w.shards[best].spare[pos[best]].nanos) {
					best = i
				}
			}
			if best < 0 {
				break
			}
			st := w.shards[best].spare[pos[best]].statement()
			w.take(&st)
			pos[best]++
		}
	}
	for i := range w.shards {
		q := &w.shards[i]
		clear(q.spare) // drop the references to sessions and shapes
		q.spare = q.spare[:0]
	}
}

// halfFull reports whether some shard holds kickAt statements or more.
func (w *Writer) halfFull() bool {
	for i := range w.shards {
		q := &w.shards[i]
		q.mu.Lock()
		n := len(q.batch)
		q.mu.Unlock()
		if n >= q.kickAt {
			return true
		}
	}
	return false
}

// idle reports whether the queue is empty and no Write waits for room.
func (w *Writer) idle() bool {
	for i := range w.shards {
		q := &w.shards[i]
		q.mu.Lock()
		busy := q.waiting > 0 || len(q.batch) > 0
		q.mu.Unlock()
		if busy {
			return false
		}
	}
	return true
}

func (w *Writer) drop() {
	w.queueLost.Add(1)
	w.dropped.Add(1)
	w.obs.Dropped(1)
}

// Blocks reports whether a full queue makes WriteStatement wait
// (OnFullBlock) rather than drop.
func (w *Writer) Blocks() bool { return w.cfg.OnFull == OnFullBlock }

// Head returns the sequence number and the hex SHA-256 of the last line
// written to the file: an anchor to export (log it, publish it as a
// metric) so that a later truncation of the log can be detected with
// pgveil audit verify --expect-head SEQ:HASH. Before the first line it is
// (0, Genesis).
func (w *Writer) Head() (seq uint64, hash string) {
	w.headMu.Lock()
	defer w.headMu.Unlock()
	return w.head.seq, string(w.head.hash[:])
}

// Stats returns the writer's counters.
func (w *Writer) Stats() Stats {
	return Stats{
		Written:   w.written.Load(),
		Markers:   w.markers.Load(),
		Dropped:   w.dropped.Load(),
		Errors:    w.errs.Load(),
		Rotations: w.rotations.Load(),
	}
}

// Flush writes every record Write accepted before the call to the file
// (without fsync). It returns the last write error if the log cannot be
// written.
func (w *Writer) Flush(ctx context.Context) error {
	if w.stopping.Load() {
		return ErrClosed
	}
	reply := make(chan error, 1)
	select {
	case w.flushReq <- reply:
	case <-w.done:
		return ErrClosed
	case <-ctx.Done():
		return fmt.Errorf("audit: flush: %w", ctx.Err())
	}
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		return fmt.Errorf("audit: flush: %w", ctx.Err())
	}
}

// Close stops accepting records, writes everything queued, syncs and
// closes the file. When ctx ends first (the disk is failing and OnFull is
// OnFullBlock), the remaining records are counted as dropped and Close
// returns. A graceful Close loses nothing.
func (w *Writer) Close(ctx context.Context) error {
	first := false
	w.closeOnce.Do(func() {
		first = true
		w.stopping.Store(true)
		// A WriteStatement that saw stopping false holds its shard's
		// lock until it has queued: after this, every such statement is
		// in a batch, and later ones are dropped.
		for i := range w.shards {
			w.shards[i].mu.Lock()
			w.shards[i].mu.Unlock()
		}
		close(w.closing)
	})
	if !first {
		<-w.done
		return ErrClosed
	}
	select {
	case <-w.done:
	case <-ctx.Done():
		w.abortOnce.Do(func() { close(w.abort) })
		<-w.done
	}
	return w.closeErr
}

// run is the writer goroutine.
func (w *Writer) run() {
	defer close(w.done)
	var flushC, retryC <-chan time.Time
	var flushT, retryT *time.Timer
	if w.pendingTorn > 0 {
		w.emitMarkers()
		w.flush()
	}
	for {
		if w.failing && retryC == nil {
			retryT = time.NewTimer(w.cfg.RetryInterval)
			retryC = retryT.C
		}
		select {
		case <-w.kick:
			switch {
			case w.cfg.FlushInterval == 0:
				w.takeBatch()
				w.flush()
				continue
			case w.halfFull():
				w.takeBatch()
			}
			if flushC == nil {
				flushT = time.NewTimer(w.cfg.FlushInterval)
				flushC = flushT.C
			}
		case <-flushC:
			flushC = nil
			w.takeBatch()
			w.flush()
		case <-retryC:
			retryC = nil
			if w.failing {
				w.lastTry = time.Now()
				w.emitMarkers()
				w.flush()
			}
		case reply := <-w.flushReq:
			w.takeBatch()
			w.emitMarkers()
			w.flush()
			if w.failing {
				reply <- fmt.Errorf("audit: log not writable: %w", w.lastErr)
			} else {
				reply <- nil
			}
		case <-w.closing:
			if flushT != nil {
				flushT.Stop()
			}
			if retryT != nil {
				retryT.Stop()
			}
			w.finish()
			return
		}
	}
}

// finish runs at Close: it takes what is queued and what Writes waiting
// for room add, writes it, and closes the file.
func (w *Writer) finish() {
	for {
		w.takeBatch()
		if w.idle() {
			break
		}
		select {
		case <-w.abort:
			w.aborted = true
		case <-time.After(time.Millisecond):
		}
	}
	w.emitMarkers()
	w.flush()
	if n := w.queueLost.Swap(0); n > 0 {
		w.pendingLost += n
	}
	var errs []error
	if w.aborted && w.dropped.Load() > 0 {
		errs = append(errs, fmt.Errorf("audit: close gave up waiting for the log to be writable; %d records lost since start", w.dropped.Load()))
	}
	if w.pendingLost > 0 {
		errs = append(errs, fmt.Errorf("audit: %d lost records could not be recorded in the log", w.pendingLost))
	}
	if w.failing {
		errs = append(errs, fmt.Errorf("audit: log not writable: %w", w.lastErr))
	}
	if err := w.f.Sync(); err != nil && !w.failing {
		errs = append(errs, fmt.Errorf("audit: sync log: %w", err))
	}
	w.syncs.Wait()
	if err := w.f.Close(); err != nil {
		errs = append(errs, fmt.Errorf("audit: close log: %w", err))
	}
	w.closeErr = errors.Join(errs...)
}

// take encodes one record into the buffer, or drops it while the log is
// failing under OnFullDrop (trying the log again every RetryInterval).
func (w *Writer) take(r *Statement) {
	switch {
	case !w.dropping():
		w.emitMarkers()
	case time.Since(w.lastTry) >= w.cfg.RetryInterval:
		w.lastTry = time.Now()
		w.emitMarkers()
		w.flush()
	}
	if w.dropping() {
		w.pendingLost++
		w.pendingWhy |= reasonIO
		if w.aborted {
			w.pendingWhy |= reasonClose
		}
		w.dropped.Add(1)
		w.obs.Dropped(1)
		return
	}
	preSeq, preHash, start := w.chain.seq, w.chain.hash, len(w.buf)
	w.buf = w.chain.appendStmt(w.buf, r)
	w.placed(start, head{preSeq, preHash}, pending{stmts: 1})
}

// dropping says records are dropped rather than encoded: the log is
// failing and the policy (or a Close that gave up) does not wait.
func (w *Writer) dropping() bool {
	return w.failing && (w.cfg.OnFull == OnFullDrop || w.aborted)
}

// emitMarkers appends the torn marker and the gap marker that are due.
func (w *Writer) emitMarkers() {
	if n := w.queueLost.Load(); n > 0 {
		w.pendingLost += w.queueLost.Swap(0)
		w.pendingWhy |= reasonQueue
	}
	if w.pendingTorn > 0 {
		n := w.pendingTorn
		w.pendingTorn = 0
		preSeq, preHash, start := w.chain.seq, w.chain.hash, len(w.buf)
		w.buf = w.chain.appendTorn(w.buf, time.Now(), n)
		w.placed(start, head{preSeq, preHash}, pending{markers: 1, torn: n})
	}
	if w.pendingLost > 0 {
		n, why := w.pendingLost, w.pendingWhy
		w.pendingLost, w.pendingWhy = 0, 0
		w.rated(&w.lossLog, slog.LevelWarn, "audit records lost; writing a gap marker", "lost", n, "reason", reasonText(why))
		preSeq, preHash, start := w.chain.seq, w.chain.hash, len(w.buf)
		w.buf = w.chain.appendGap(w.buf, time.Now(), n, reasonText(why))
		w.placed(start, head{preSeq, preHash}, pending{markers: 1, lost: n, reasons: why})
	}
}

// placed accounts for the line just appended at buf[start:], whose
// predecessor is pre; it rotates before the line when the line would take
// the file past MaxSize, and writes out a full buffer.
func (w *Writer) placed(start int, pre head, line pending) {
	w.inBuf.add(line)
	if w.cfg.MaxSize > 0 && w.size+int64(len(w.buf)) > w.cfg.MaxSize && w.size+int64(start) > 0 {
		if start > 0 {
			before := w.inBuf
			before.stmts -= line.stmts
			before.markers -= line.markers
			before.lost -= line.lost
			before.torn -= line.torn
			if w.writeOut(start, pre, before) != nil {
				return
			}
		}
		w.rotate()
	}
	if len(w.buf) >= flushSize {
		w.flush()
	}
}

// flush writes the whole buffer.
func (w *Writer) flush() {
	if len(w.buf) == 0 {
		return
	}
	if now := time.Now(); now.Sub(w.lastCheck) >= fileCheckEvery {
		w.lastCheck = now
		w.checkFile()
	}
	w.writeOut(len(w.buf), head{w.chain.seq, w.chain.hash}, w.inBuf)
}

// writeOut writes buf[:n], which ends at chain position end and holds
// what counts describes. On failure the file is cut back to its last
// complete line; then OnFullDrop discards the whole buffer (its records
// are lost and a gap marker will count them) while OnFullBlock retries
// until the write succeeds or Close gives up.
func (w *Writer) writeOut(n int, end head, counts pending) error {
	for {
		err := w.tryWrite(n)
		if err == nil {
			break
		}
		w.failing, w.lastErr, w.lastTry = true, err, time.Now()
		w.noteError(errKind(err), err)
		if w.cfg.OnFull == OnFullDrop || w.aborted {
			w.discard()
			return err
		}
		t := time.NewTimer(w.cfg.RetryInterval)
		select {
		case <-w.abort:
			t.Stop()
			w.aborted = true
			w.discard()
			return err
		case <-t.C:
		}
	}
	w.size += int64(n)
	w.cache.wrote(w.f, w.size)
	w.committed = end
	w.headMu.Lock()
	w.head = end
	w.headMu.Unlock()
	w.buf = w.buf[:copy(w.buf, w.buf[n:])]
	w.inBuf.stmts -= counts.stmts
	w.inBuf.markers -= counts.markers
	w.inBuf.lost -= counts.lost
	w.inBuf.torn -= counts.torn
	if w.inBuf.markers == 0 {
		w.inBuf.reasons = 0
	}
	w.written.Add(uint64(counts.stmts))
	w.markers.Add(uint64(counts.markers))
	if counts.stmts > 0 {
		w.obs.Written(counts.stmts)
	}
	if w.failing {
		w.failing = false
		w.rated(&w.okLog, slog.LevelInfo, "audit log writable again")
	}
	return nil
}

// tryWrite writes buf[:n] once; a partial write is truncated away.
func (w *Writer) tryWrite(n int) error {
	if w.needTrunc {
		if err := w.f.Truncate(w.size); err != nil {
			return fmt.Errorf("truncate partial write: %w", err)
		}
		w.needTrunc = false
	}
	m, err := w.f.Write(w.buf[:n])
	if err == nil {
		return nil
	}
	if m > 0 {
		w.needTrunc = true
		if w.f.Truncate(w.size) == nil {
			w.needTrunc = false
		}
	}
	return err
}

// discard drops the unwritten buffer after a failed write: the chain goes
// back to the last line on disk and the buffer's records become a loss
// for the next gap marker to count.
func (w *Writer) discard() {
	w.chain.seq, w.chain.hash = w.committed.seq, w.committed.hash
	w.buf = w.buf[:0]
	p := w.inBuf
	w.inBuf = pending{}
	w.pendingTorn += p.torn
	w.pendingLost += p.lost + int64(p.stmts)
	w.pendingWhy |= p.reasons
	if p.stmts > 0 {
		w.pendingWhy |= reasonIO
		if w.aborted {
			w.pendingWhy |= reasonClose
		}
		w.dropped.Add(uint64(p.stmts))
		w.obs.Dropped(p.stmts)
	}
}

// rotate renames Path to Path.1 (shifting older files up and deleting the
// one beyond Keep) and opens a new Path. On failure it logs, counts, and
// goes on writing to the current file, trying again after RetryInterval.
// When Path is no longer the file being written (someone moved or deleted
// it), nothing is shifted: the writer starts a new Path and the chain
// continues in it.
func (w *Writer) rotate() {
	if time.Now().Before(w.rotateAfter) {
		return
	}
	w.rotateAfter = time.Time{}
	fail := func(err error) {
		w.rotateAfter = time.Now().Add(w.cfg.RetryInterval)
		w.noteError("rotate", err)
	}
	path := w.cfg.Path
	tmp := path + ".new"
	nf, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		fail(err)
		return
	}
	cur, err := w.f.Stat()
	if err != nil {
		nf.Close()
		os.Remove(tmp)
		fail(err)
		return
	}
	if onDisk, err := os.Stat(path); err == nil && os.SameFile(cur, onDisk) {
		if err := os.Remove(path + "." + strconv.Itoa(w.cfg.Keep)); err != nil && !errors.Is(err, os.ErrNotExist) {
			w.noteError("rotate", err)
		}
		for i := w.cfg.Keep - 1; i >= 1; i-- {
			from, to := path+"."+strconv.Itoa(i), path+"."+strconv.Itoa(i+1)
			if err := os.Rename(from, to); err != nil && !errors.Is(err, os.ErrNotExist) {
				w.noteError("rotate", err)
			}
		}
		if err := os.Rename(path, path+".1"); err != nil {
			nf.Close()
			os.Remove(tmp)
			fail(err)
			return
		}
	} else {
		w.noteError("rotate", fmt.Errorf("%s was moved or deleted while being written; starting a new file", path))
	}
	if err := os.Rename(tmp, path); err != nil {
		// The current file keeps its name (Path.1 if the rename above
		// succeeded); keep writing to it and retry later.
		nf.Close()
		os.Remove(tmp)
		fail(err)
		return
	}
	// The rotated file is synced and closed in the background: on a
	// slow disk the sync can take a second, during which the writer must
	// go on taking the queue (or the queue fills and records are
	// dropped). Close waits for it.
	old := w.f
	w.syncs.Add(1)
	go func() {
		defer w.syncs.Done()
		if err := old.Sync(); err != nil {
			w.errs.Add(1)
			w.obs.Error(errKind(err))
			w.log.Error("audit log: sync of the rotated file failed", "path", w.cfg.Path, "err", err)
		} else {
			releaseAll(old)
		}
		old.Close()
	}()
	w.f, w.size = nf, 0
	w.cache.reset(0)
	w.rotations.Add(1)
	w.obs.Rotated()
}

// checkFile makes sure Path is still the file being written. When it was
// moved or deleted, lines written to the old file would be lost from the
// log; the writer logs it, counts an error, and goes on in a new file at
// Path, chained to the last line written.
func (w *Writer) checkFile() {
	cur, err := w.f.Stat()
	if err != nil {
		return
	}
	if onDisk, err := os.Stat(w.cfg.Path); err == nil && os.SameFile(cur, onDisk) {
		return
	}
	nf, err := os.OpenFile(w.cfg.Path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		w.noteError("reopen", fmt.Errorf("%s was moved or deleted while being written, and cannot be created again: %w", w.cfg.Path, err))
		return
	}
	fi, err := nf.Stat()
	if err != nil {
		nf.Close()
		w.noteError("reopen", err)
		return
	}
	w.noteError("reopen", fmt.Errorf("%s was moved or deleted while being written; continuing in a new file", w.cfg.Path))
	w.f.Close()
	w.f, w.size = nf, fi.Size()
	w.cache.reset(w.size)
}

// errKind labels a write error for metrics and logs.
func errKind(err error) string {
	switch {
	case errors.Is(err, syscall.ENOSPC):
		return "enospc"
	case errors.Is(err, syscall.EIO):
		return "eio"
	case errors.Is(err, syscall.EDQUOT):
		return "edquot"
	case errors.Is(err, syscall.EFBIG):
		return "efbig"
	}
	return "io"
}

// noteError counts an error under kind and logs it, rate-limited.
func (w *Writer) noteError(kind string, err error) {
	w.errs.Add(1)
	w.obs.Error(kind)
	w.rated(&w.errLog, slog.LevelError, "audit log write failed", "kind", kind, "err", err,
		"on_full", w.cfg.OnFull.String(), "dropped_total", w.dropped.Load())
}

// limiter lets one log line through per logEvery and counts the rest.
type limiter struct {
	last       time.Time
	suppressed int
}

// log logs msg through l: at most one line per logEvery, saying how many
// were suppressed since the last.
func (w *Writer) rated(l *limiter, level slog.Level, msg string, args ...any) {
	now := time.Now()
	if !l.last.IsZero() && now.Sub(l.last) < logEvery {
		l.suppressed++
		return
	}
	args = append(args, "path", w.cfg.Path)
	if l.suppressed > 0 {
		args = append(args, "suppressed", l.suppressed)
	}
	w.log.Log(context.Background(), level, msg, args...)
	l.last, l.suppressed = now, 0
}
