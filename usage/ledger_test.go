package usage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 30, 13, 20, 0, 0, time.UTC)

func sqliteStore(t *testing.T) *SQLiteStore {
	t.Helper()
	s, err := OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "usage.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newLedger(t *testing.T, cfg Config) *Ledger {
	t.Helper()
	if cfg.FlushInterval == 0 {
		cfg.FlushInterval = -1
	}
	l, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := l.Close(ctx); err != nil && !errors.Is(err, ErrClosed) {
			t.Logf("close ledger: %v", err)
		}
	})
	return l
}

func queryAll(t *testing.T, s Store) []Row {
	t.Helper()
	rows, err := s.Query(context.Background(), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

// rowMap indexes rows by a compact key: hour/user/roles/column/treatment.
func rowMap(rows []Row) map[string]Counts {
	m := map[string]Counts{}
	for _, r := range rows {
		k := fmt.Sprintf("%s/%s/%s/%s/%s/%s", r.Hour.Format("15:04"), r.Database, r.User, r.Roles, r.ColumnName(), r.Treatment)
		c := m[k]
		c.Add(&r.Counts)
		m[k] = c
	}
	return m
}

func stmt(at time.Time, user string, roles []string, rows int64, ok bool, cols ...ColumnUse) *Statement {
	return &Statement{Time: at, Database: "app", User: user, Roles: roles, Application: "psql", Columns: cols, Rows: rows, OK: ok}
}

func col(table, column string, cl ClauseSet, t Treatment) ColumnUse {
	return ColumnUse{Schema: "public", Table: table, Column: column, Clauses: cl, Treatment: t}
}

func TestLedgerCounts(t *testing.T) {
	tests := []struct {
		name  string
		stmts []*Statement
		want  []wantCount
	}{
		{
			name: "clauses, rows only for output, outcome",
			stmts: []*Statement{
				stmt(t0, "ann", []string{"ann", "support"}, 3, true,
					col("customers", "email", Output|Filter, Raw),
					col("customers", "id", Join|GroupOrder, Raw)),
				stmt(t0.Add(time.Minute), "ann", []string{"ann", "support"}, 5, false,
					col("customers", "email", AggregateArg, Raw)),
			},
			want: []wantCount{
				{"13:00/app/ann/ann,support/public.customers.email/raw", Counts{Statements: 2, Reads: 2, Output: 1, Filter: 1, AggregateArg: 1, OK: 1, Failed: 1, Rows: 3, LastSeen: t0.Add(time.Minute), LastRead: t0.Add(time.Minute)}},
				{"13:00/app/ann/ann,support/public.customers.id/raw", Counts{Statements: 1, Reads: 1, Join: 1, GroupOrder: 1, OK: 1, LastSeen: t0, LastRead: t0}},
			},
		},
		{
			name: "role sets are sorted and deduplicated",
			stmts: []*Statement{
				stmt(t0, "bob", []string{"support", "bob"}, 1, true, col("customers", "email", Output, Masked)),
				stmt(t0, "bob", []string{"bob", "support", "bob"}, 1, true, col("customers", "email", Output, Masked)),
			},
			want: []wantCount{
				{"13:00/app/bob/bob,support/public.customers.email/masked", Counts{Statements: 2, Reads: 2, Output: 2, OK: 2, Rows: 2, LastSeen: t0, LastRead: t0}},
			},
		},
		{
			name: "hour buckets and treatments are separate keys; writes are not reads",
			stmts: []*Statement{
				stmt(t0.Truncate(time.Hour).Add(-time.Nanosecond), "cy", []string{"cy"}, 0, true, col("orders", "total", WriteTarget, Raw)),
				stmt(t0.Truncate(time.Hour), "cy", []string{"cy"}, 2, true, col("orders", "total", Output, Raw)),
				stmt(t0.Truncate(time.Hour), "cy", []string{"cy"}, 0, false, col("orders", "total", Output, Refused)),
			},
			want: []wantCount{
				{"12:00/app/cy/cy/public.orders.total/raw", Counts{Statements: 1, WriteTarget: 1, OK: 1, LastSeen: t0.Truncate(time.Hour).Add(-time.Microsecond)}},
				{"13:00/app/cy/cy/public.orders.total/raw", Counts{Statements: 1, Reads: 1, Output: 1, OK: 1, Rows: 2, LastSeen: t0.Truncate(time.Hour), LastRead: t0.Truncate(time.Hour)}},
				{"13:00/app/cy/cy/public.orders.total/refused", Counts{Statements: 1, Reads: 1, Output: 1, Failed: 1, LastSeen: t0.Truncate(time.Hour), LastRead: t0.Truncate(time.Hour)}},
			},
		},
	}
	for _, tt := range tests {
		for _, via := range []string{"Record", "Session"} {
			t.Run(tt.name+"/"+via, func(t *testing.T) {
				store := sqliteStore(t)
				l := newLedger(t, Config{Store: store})
				sessions := map[string]*Session{}
				for _, s := range tt.stmts {
					if via == "Record" {
						l.Record(s)
						continue
					}
					id := s.Database + "/" + s.User + "/" + strings.Join(s.Roles, ",") + "/" + s.Application
					if sessions[id] == nil {
						sessions[id] = l.Session(s.Database, s.User, s.Roles, s.Application)
					}
					sessions[id].Record(s.Time, s.Columns, s.Rows, s.OK)
				}
				checkCounts(t, l, store, tt.want)
			})
		}
	}
}

// wantCount is one expected row of the store, keyed as rowMap does.
type wantCount struct {
	key string
	c   Counts
}

// checkCounts flushes l and compares what store holds with want.
func checkCounts(t *testing.T, l *Ledger, store Store, want []wantCount) {
	t.Helper()
	if err := l.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := rowMap(queryAll(t, store))
	if len(got) != len(want) {
		t.Errorf("got %d keys, want %d: %v", len(got), len(want), got)
	}
	for _, w := range want {
		if g, ok := got[w.key]; !ok {
			t.Errorf("missing key %s", w.key)
		} else if g != w.c {
			t.Errorf("%s:\n got  %+v\n want %+v", w.key, g, w.c)
		}
	}
}

// TestSessionAcrossFlushes records through one Session handle before and
// after flushes (the live counters are swapped under it) and across an
// hour: every statement is counted once, in its hour.
func TestSessionAcrossFlushes(t *testing.T) {
	store := sqliteStore(t)
	l := newLedger(t, Config{Store: store})
	h := l.Session("app", "ann", []string{"support", "ann"}, "psql")
	cols := []ColumnUse{col("customers", "email", Output|Filter, Masked), col("customers", "id", Join, Raw)}
	other := []ColumnUse{col("customers", "email", Output, Masked)}
	next := t0.Truncate(time.Hour).Add(time.Hour)
	for i := range 3 {
		h.Record(t0, cols, 2, true)
		h.Record(t0, other, 1, false)
		h.Record(next, other, 1, true)
		if i < 2 {
			if err := l.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
	}
	checkCounts(t, l, store, []wantCount{
		{"13:00/app/ann/ann,support/public.customers.email/masked", Counts{Statements: 6, Reads: 6, Output: 6, Filter: 3, OK: 3, Failed: 3, Rows: 9, LastSeen: t0, LastRead: t0}},
		{"13:00/app/ann/ann,support/public.customers.id/raw", Counts{Statements: 3, Reads: 3, Join: 3, OK: 3, LastSeen: t0, LastRead: t0}},
		{"14:00/app/ann/ann,support/public.customers.email/masked", Counts{Statements: 3, Reads: 3, Output: 3, OK: 3, Rows: 3, LastSeen: next, LastRead: next}},
	})
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.Record(t0, cols, 2, true) // after Close: nothing, no panic
}

func TestSessionRecordDoesNotAllocate(t *testing.T) {
	l := newLedger(t, Config{Store: sqliteStore(t)})
	h := l.Session("app", "ann", []string{"support", "ann"}, "psql")
	cols := []ColumnUse{col("customers", "email", Output|Filter, Raw), col("customers", "id", Join, Raw)}
	h.Record(t0, cols, 3, true) // Creates the keys.
	if n := testing.AllocsPerRun(1000, func() { h.Record(t0, cols, 3, true) }); n != 0 {
		t.Fatalf("Session.Record allocates %.1f times per call in the steady state", n)
	}
}

func TestLedgerStatementWithoutTimeUsesNow(t *testing.T) {
	store := sqliteStore(t)
	l := newLedger(t, Config{Store: store, Now: func() time.Time { return t0 }})
	l.Record(&Statement{User: "u", Columns: []ColumnUse{col("t", "c", Output, Raw)}, OK: true})
	if err := l.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	rows := queryAll(t, store)
	if len(rows) != 1 || !rows[0].Hour.Equal(t0.Truncate(time.Hour)) || !rows[0].LastSeen.Equal(t0) {
		t.Fatalf("rows = %+v", rows)
	}
}

func TestRecordDoesNotAllocate(t *testing.T) {
	l := newLedger(t, Config{Store: sqliteStore(t)})
	s := stmt(t0, "ann", []string{"support", "ann"}, 3, true,
		col("customers", "email", Output|Filter, Raw), col("customers", "id", Join, Raw))
	l.Record(s) // Creates the keys.
	if n := testing.AllocsPerRun(1000, func() { l.Record(s) }); n != 0 {
		t.Fatalf("Record allocates %.1f times per call in the steady state", n)
	}
}

// countingObserver records what the ledger reports.
type countingObserver struct {
	mu      sync.Mutex
	flushes []FlushStats
	use     map[string]int64
}

func (o *countingObserver) Flushed(fs FlushStats) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.flushes = append(o.flushes, fs)
}

func (o *countingObserver) ColumnUse(schema, table, column string, t Treatment, n int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.use == nil {
		o.use = map[string]int64{}
	}
	o.use[schema+"."+table+"."+column+"/"+t.String()] += n
}

func TestConcurrentRecordAndFlush(t *testing.T) {
	store := sqliteStore(t)
	obs := &countingObserver{}
	l := newLedger(t, Config{Store: store, FlushInterval: 5 * time.Millisecond, Observer: obs})
	const workers, perWorker = 16, 500
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			user := fmt.Sprintf("u%d", w%4)
			for i := range perWorker {
				l.Record(stmt(t0.Add(time.Duration(i)*time.Second), user, []string{user, "analyst"}, 1, i%10 != 0,
					col("customers", "email", Output, Masked), col("customers", "id", Filter, Raw)))
				if i%100 == 0 {
					_ = l.Snapshot()
					time.Sleep(2 * time.Millisecond) // Let the flusher swap mid-stream.
				}
			}
		}()
	}
	wg.Wait()
	// The flusher, not Close, must have written at least once.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		obs.mu.Lock()
		n := len(obs.flushes)
		obs.mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the flusher did not run within 5s")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := l.Close(ctx); err != nil {
		t.Fatal(err)
	}
	var stmts, ok, failed, rows int64
	for _, r := range queryAll(t, store) {
		stmts += r.Statements
		ok += r.OK
		failed += r.Failed
		rows += r.Rows
	}
	const total = workers * perWorker
	if stmts != 2*total || ok != 2*total*9/10 || failed != 2*total/10 || rows != total {
		t.Fatalf("stored statements=%d ok=%d failed=%d rows=%d; want %d %d %d %d", stmts, ok, failed, rows,
			2*total, 2*total*9/10, 2*total/10, total)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if obs.use["public.customers.email/masked"] != total || obs.use["public.customers.id/raw"] != total {
		t.Errorf("observer column use = %v", obs.use)
	}
	st := l.Stats()
	if st.StatementsWritten != 2*total || st.Failures != 0 {
		t.Errorf("stats = %+v", st)
	}
}

// TestMergeBackWhilePostgresIsDown stops the store's server, records and
// fails to flush, restarts the server, and checks that nothing was lost.
func TestMergeBackWhilePostgresIsDown(t *testing.T) {
	pg := ownCluster(t)
	ctx := context.Background()
	store, err := OpenPostgres(ctx, pg.URL("postgres", "", "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	obs := &countingObserver{}
	var logs strings.Builder
	var logMu sync.Mutex
	logger := slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logs}, nil))
	l := newLedger(t, Config{Store: store, Observer: obs, Logger: logger, LogEvery: time.Hour, FlushTimeout: 5 * time.Second})

	email := col("customers", "email", Output, Raw)
	l.Record(stmt(t0, "ann", []string{"ann"}, 1, true, email))
	if err := l.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	if err := pg.StopServer(); err != nil {
		t.Fatal(err)
	}
	l.Record(stmt(t0, "ann", []string{"ann"}, 2, true, email))
	l.Record(stmt(t0, "bob", []string{"bob"}, 4, true, email))
	for i := range 2 {
		fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := l.Flush(fctx)
		cancel()
		if err == nil {
			t.Fatalf("flush %d succeeded with the server stopped", i)
		}
		l.Record(stmt(t0, "ann", []string{"ann"}, 8, true, email))
	}
	snap := l.Snapshot()
	var unwritten int64
	for _, r := range snap.Unwritten {
		unwritten += r.Statements
	}
	if unwritten != 4 {
		t.Errorf("snapshot holds %d unwritten statements, want 4", unwritten)
	}
	if snap.Stats.Failures != 2 || snap.Stats.LastError == "" {
		t.Errorf("stats = %+v", snap.Stats)
	}

	if err := pg.StartAgain(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.Flush(ctx); err != nil {
		t.Fatalf("flush after restart: %v", err)
	}
	got := rowMap(queryAll(t, store))
	want := map[string]Counts{
		"13:00/app/ann/ann/public.customers.email/raw": {Statements: 4, Reads: 4, Output: 4, OK: 4, Rows: 1 + 2 + 8 + 8, LastSeen: t0, LastRead: t0},
		"13:00/app/bob/bob/public.customers.email/raw": {Statements: 1, Reads: 1, Output: 1, OK: 1, Rows: 4, LastSeen: t0, LastRead: t0},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("stored\n %v\nwant\n %v", got, want)
	}

	obs.mu.Lock()
	var failedFlushes, pending int
	for _, fs := range obs.flushes {
		if fs.Err != nil {
			failedFlushes++
			pending = fs.PendingKeys
		}
	}
	obs.mu.Unlock()
	if failedFlushes != 2 || pending != 2 {
		t.Errorf("observer saw %d failed flushes (last pending %d), want 2 (2)", failedFlushes, pending)
	}
	logMu.Lock()
	out := logs.String()
	logMu.Unlock()
	if n := strings.Count(out, "usage store write failed"); n != 1 {
		t.Errorf("%d failure log lines, want 1 (rate limited):\n%s", n, out)
	}
	if !strings.Contains(out, "usage store recovered") {
		t.Errorf("no recovery line:\n%s", out)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *strings.Builder
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// TestMaxPendingDrops fails every flush with a closed SQLite store and
// checks that at most MaxPending keys are kept and the rest counted.
func TestMaxPendingDrops(t *testing.T) {
	store := sqliteStore(t)
	store.Close()
	obs := &countingObserver{}
	l := newLedger(t, Config{Store: store, MaxPending: 3, Observer: obs})
	for i := range 5 {
		l.Record(stmt(t0, "u", []string{"u"}, 1, true, col("t", fmt.Sprintf("c%d", i), Output, Raw)))
	}
	if err := l.Flush(context.Background()); err == nil {
		t.Fatal("flush to a closed store succeeded")
	}
	st := l.Stats()
	if st.DroppedKeys != 2 || st.DroppedStatements != 2 {
		t.Errorf("dropped %d keys, %d statements; want 2, 2", st.DroppedKeys, st.DroppedStatements)
	}
	if n := len(l.Snapshot().Unwritten); n != 3 {
		t.Errorf("%d keys pending, want 3", n)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if len(obs.flushes) != 1 || obs.flushes[0].DroppedKeys != 2 || obs.flushes[0].PendingKeys != 3 {
		t.Errorf("observer flushes = %+v", obs.flushes)
	}
}

func TestCloseFlushesAndStopsCounting(t *testing.T) {
	store := sqliteStore(t)
	l, err := New(Config{Store: store, FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	l.Record(stmt(t0, "u", []string{"u"}, 1, true, col("t", "c", Output, Raw)))
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	l.Record(stmt(t0, "u", []string{"u"}, 1, true, col("t", "c", Output, Raw)))
	if err := l.Close(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("second Close = %v, want ErrClosed", err)
	}
	if err := l.Flush(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Flush after Close = %v, want ErrClosed", err)
	}
	rows := queryAll(t, store)
	if len(rows) != 1 || rows[0].Statements != 1 {
		t.Fatalf("stored %+v, want one statement", rows)
	}
}

func TestCloseGivesUpWhenContextEnds(t *testing.T) {
	store := sqliteStore(t)
	store.Close()
	l, err := New(Config{Store: store, FlushInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	l.Record(stmt(t0, "u", []string{"u"}, 1, true, col("t", "c", Output, Raw)))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err = l.Close(ctx)
	if err == nil || !strings.Contains(err.Error(), "1 keys not written") {
		t.Fatalf("Close = %v, want an error counting the lost keys", err)
	}
}

func TestFlusherRunsOnInterval(t *testing.T) {
	store := sqliteStore(t)
	l := newLedger(t, Config{Store: store, FlushInterval: 20 * time.Millisecond})
	l.Record(stmt(t0, "u", []string{"u"}, 1, true, col("t", "c", Output, Raw)))
	deadline := time.Now().Add(5 * time.Second)
	for len(queryAll(t, store)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the flusher wrote nothing within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSnapshotSumsUnwrittenAndWritten(t *testing.T) {
	l := newLedger(t, Config{Store: sqliteStore(t)})
	email := col("customers", "email", Output, Masked)
	l.Record(stmt(t0, "a", []string{"a"}, 1, true, email))
	l.Record(stmt(t0, "b", []string{"b"}, 1, true, email))
	if err := l.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	l.Record(stmt(t0, "a", []string{"a"}, 1, true, email))
	s := l.Snapshot()
	if len(s.Columns) != 1 {
		t.Fatalf("columns = %+v", s.Columns)
	}
	c := s.Columns[0]
	if c.Column != "email" || c.Treatment != Masked || c.Written.Statements != 2 || c.Unwritten.Statements != 1 {
		t.Errorf("column total = %+v", c)
	}
	if len(s.Unwritten) != 1 || s.Stats.Flushes != 1 || s.Stats.KeysWritten != 2 {
		t.Errorf("snapshot = %+v", s)
	}
}

func TestNewValidates(t *testing.T) {
	store := sqliteStore(t)
	for _, cfg := range []Config{
		{},
		{Store: store, MaxPending: -1},
		{Store: store, FlushTimeout: -time.Second},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
}

func BenchmarkRecord(b *testing.B) {
	l, err := New(Config{Store: nopStore{}, FlushInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	s := stmt(t0, "ann", []string{"ann", "support"}, 3, true,
		col("customers", "email", Output|Filter, Masked), col("customers", "id", Join, Raw),
		col("customers", "name", Output, Raw), col("orders", "total", AggregateArg, Raw))
	b.ReportAllocs()
	for b.Loop() {
		l.Record(s)
	}
}

func BenchmarkSessionRecord(b *testing.B) {
	l, err := New(Config{Store: nopStore{}, FlushInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	h := l.Session("app", "ann", []string{"ann", "support"}, "psql")
	cols := []ColumnUse{col("customers", "email", Output|Filter, Masked), col("customers", "id", Join, Raw),
		col("customers", "name", Output, Raw), col("orders", "total", AggregateArg, Raw)}
	b.ReportAllocs()
	for b.Loop() {
		h.Record(t0, cols, 3, true)
	}
}

func BenchmarkRecordParallel(b *testing.B) {
	l, err := New(Config{Store: nopStore{}, FlushInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		s := stmt(t0, "ann", []string{"ann", "support"}, 3, true,
			col("customers", "email", Output|Filter, Masked), col("customers", "id", Join, Raw))
		for pb.Next() {
			l.Record(s)
		}
	})
}

// nopStore discards deltas; only the benchmarks use it, to measure Record
// alone.
type nopStore struct{}

func (nopStore) Add(context.Context, []Row) error                { return nil }
func (nopStore) Query(context.Context, time.Time) ([]Row, error) { return nil, nil }
func (nopStore) Close() error                                    { return nil }

// TestSessionSlotsMatchRecord records one random sequence of statements
// (more shapes than a Session has slots, two hours, successes and
// failures, flushes and Snapshots in between, a session ended half-way
// and used again) through Session handles and through Ledger.Record: the
// stores must hold the same counts.
func TestSessionSlotsMatchRecord(t *testing.T) {
	shapes := [][]ColumnUse{
		{col("customers", "email", Output|Filter, Masked), col("customers", "id", Filter, Raw)},
		{col("customers", "email", Output, Raw)},
		{col("orders", "total", AggregateArg|GroupOrder, Raw), col("orders", "customer", Join, Raw)},
		{col("orders", "total", WriteTarget, Raw)},
		{col("customers", "ssn", Output, Refused)},
		{col("customers", "phone", Output, Decrypted), col("customers", "id", Filter, Raw)},
		{col("customers", "email", Filter, Masked)},
	}
	users := []string{"ann", "bob", "cy"}
	type op struct {
		user  int
		shape int
		at    time.Time
		rows  int64
		ok    bool
		event int // 0 record; 1 flush; 2 snapshot; 3 end the user's session
	}
	rng := rand.New(rand.NewPCG(42, 0))
	var ops []op
	for range 3000 {
		o := op{user: rng.IntN(len(users)), shape: rng.IntN(len(shapes)), rows: int64(rng.IntN(5)), ok: rng.IntN(4) > 0,
			at: t0.Add(time.Duration(rng.IntN(7200)) * time.Second)}
		switch r := rng.IntN(100); {
		case r < 2:
			o.event = 1
		case r < 4:
			o.event = 2
		case r < 5:
			o.event = 3
		}
		ops = append(ops, o)
	}
	run := func(viaSession bool) map[string]Counts {
		store := sqliteStore(t)
		l := newLedger(t, Config{Store: store})
		handles := make([]*Session, len(users))
		for _, o := range ops {
			u := users[o.user]
			switch o.event {
			case 1:
				if err := l.Flush(context.Background()); err != nil {
					t.Fatal(err)
				}
			case 2:
				l.Snapshot()
			case 3:
				if h := handles[o.user]; h != nil && viaSession {
					h.End()
					if o.user == 0 {
						handles[o.user] = nil // a new session; the others go on with ended handles
					}
				}
			}
			if !viaSession {
				l.Record(stmt(o.at, u, []string{u}, o.rows, o.ok, shapes[o.shape]...))
				continue
			}
			if handles[o.user] == nil {
				handles[o.user] = l.Session("app", u, []string{u}, "psql")
			}
			handles[o.user].Record(o.at, shapes[o.shape], o.rows, o.ok)
		}
		if err := l.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		return rowMap(queryAll(t, store))
	}
	want, got := run(false), run(true)
	if len(got) != len(want) {
		t.Errorf("Session path: %d keys, Record path: %d", len(got), len(want))
	}
	for k, w := range want {
		if g := got[k]; g != w {
			t.Errorf("%s:\n Session %+v\n Record  %+v", k, g, w)
		}
	}
}

// TestSessionsConcurrentWithFlushes: sessions record on their own
// goroutines while flushes and Snapshots run; some sessions end, some do
// not. After Close the store holds every statement exactly once.
func TestSessionsConcurrentWithFlushes(t *testing.T) {
	store := sqliteStore(t)
	l := newLedger(t, Config{Store: store})
	shapes := [][]ColumnUse{
		{col("customers", "email", Output, Masked)},
		{col("customers", "email", Filter, Masked), col("customers", "id", Output, Raw)},
		{col("customers", "email", Output, Masked), col("orders", "total", Output, Raw)},
		{col("orders", "total", Output, Raw)},
		{col("customers", "id", Filter, Raw)},
		{col("customers", "email", GroupOrder, Masked)},
	}
	const sessions, per = 8, 3000
	stop := make(chan struct{})
	var flushes sync.WaitGroup
	flushes.Add(1)
	go func() {
		defer flushes.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if i%2 == 0 {
				if err := l.Flush(context.Background()); err != nil {
					t.Error(err)
					return
				}
			} else {
				l.Snapshot()
			}
		}
	}()
	var wg sync.WaitGroup
	for s := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := l.Session("app", "u", []string{"u"}, "psql")
			for i := range per {
				h.Record(t0, shapes[(i*(s+1))%len(shapes)], 1, true)
			}
			if s%2 == 0 {
				h.End()
			}
		}()
	}
	wg.Wait()
	close(stop)
	flushes.Wait()
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{}
	for s := range sessions {
		for i := range per {
			for _, c := range shapes[(i*(s+1))%len(shapes)] {
				want[c.Table+"."+c.Column+"/"+c.Treatment.String()]++
			}
		}
	}
	got := map[string]int64{}
	for _, r := range queryAll(t, store) {
		got[r.Table+"."+r.Column+"/"+r.Treatment.String()] += r.Statements
	}
	if len(got) != len(want) {
		t.Errorf("got %v, want %v", got, want)
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: %d statements, want %d", k, got[k], w)
		}
	}
}
