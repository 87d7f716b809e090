package main

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/pgveil/pgveil/audit"
	"github.com/pgveil/pgveil/proxy"
	"github.com/pgveil/pgveil/rewrite"
	"github.com/pgveil/pgveil/rules"
	"github.com/pgveil/pgveil/usage"
)

// TestSinkShortWay runs one random sequence of statements through two
// sinks, each with a real SQLite ledger and audit log: one always gets the
// whole event (Statement), the other as the proxy's tracker calls it (Ran
// for a statement that succeeded once its memo is filled, Statement
// otherwise). The ledgers must count the same and the audit logs be the
// same bytes.
func TestSinkShortWay(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	type side struct {
		ledger *usage.Ledger
		log    string
		sink   *statementSink
		memos  []proxy.Memo
	}
	open := func(name string) *side {
		store, err := usage.OpenSQLite(ctx, filepath.Join(dir, name+".db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { store.Close() })
		l, err := usage.New(usage.Config{Store: store, FlushInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		log := filepath.Join(dir, name+".log")
		w, err := audit.New(audit.Config{Path: log, OnFull: audit.OnFullBlock})
		if err != nil {
			t.Fatal(err)
		}
		return &side{ledger: l, log: log, sink: &statementSink{ledger: l, audit: w}, memos: make([]proxy.Memo, 5)}
	}
	whole, short := open("whole"), open("short")

	email := &rules.ColumnRule{Key: rules.ColumnKey{Schema: "public", Table: "customers", Column: "email"}}
	shapes := []struct {
		norm string
		uses []rewrite.ColumnUse
	}{
		{"SELECT email FROM customers WHERE id = ?", []rewrite.ColumnUse{
			{Column: email.Key, Clauses: rewrite.ClauseOutput, Treatment: rules.TreatMask, Rule: email},
			{Column: rules.ColumnKey{Schema: "public", Table: "customers", Column: "id"}, Clauses: rewrite.ClauseFilter}}},
		{"SELECT id FROM customers", []rewrite.ColumnUse{{Column: rules.ColumnKey{Schema: "public", Table: "customers", Column: "id"}, Clauses: rewrite.ClauseOutput}}},
		{"SELECT ?", nil},
		{"UPDATE customers SET email = ? WHERE id = ?", []rewrite.ColumnUse{{Column: email.Key, Clauses: rewrite.ClauseWriteTarget, Rule: email}}},
		{"", nil}, // not analysed
	}
	base := proxy.StatementEvent{Session: 7, User: "app", Database: "shop", Application: "test", ClientIP: "10.0.0.2", Roles: []string{"app"}}
	sessW := whole.sink.SessionSink(&base)
	sessS := short.sink.SessionSink(&base)
	ran := sessS.(proxy.RanSink)
	rng := rand.New(rand.NewPCG(1, 2))
	start := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	shortWays := 0
	for i := range 2000 {
		k := rng.IntN(len(shapes))
		ev := base
		ev.Start = start.Add(time.Duration(i) * 1500 * time.Millisecond)
		ev.Duration = time.Duration(rng.IntN(5000)) * time.Microsecond
		ev.Normalized, ev.Fingerprint, ev.Uses = shapes[k].norm, fingerprintOf(shapes[k].norm), shapes[k].uses
		ev.Rows = int64(rng.IntN(4))
		switch r := rng.IntN(10); {
		case r == 0:
			ev.Outcome, ev.SQLState = "error", "22012"
		case r == 1:
			ev.Outcome, ev.SQLState, ev.Rule = "refused", "42501", "explain"
		default:
			ev.Outcome = "ok"
		}
		we := ev
		we.Memo = &whole.memos[k]
		sessW.Statement(&we)
		se := ev
		se.Memo = &short.memos[k]
		if ev.Outcome == "ok" && se.Memo.Load() != nil && ran.Ran(se.Memo, ev.Start, ev.Duration, ev.Rows) {
			shortWays++
			continue
		}
		sessS.Statement(&se)
	}
	if shortWays < 1000 {
		t.Fatalf("the short way took %d statements of 2000", shortWays)
	}
	for _, s := range []*side{whole, short} {
		if err := s.sink.audit.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	a, b := whole.ledger.Snapshot(), short.ledger.Snapshot()
	if len(a.Columns) == 0 || !reflect.DeepEqual(a.Columns, b.Columns) {
		t.Errorf("ledgers differ:\nwhole %+v\nshort %+v", a.Columns, b.Columns)
	}
	la, err := os.ReadFile(whole.log)
	if err != nil {
		t.Fatal(err)
	}
	lb, err := os.ReadFile(short.log)
	if err != nil {
		t.Fatal(err)
	}
	if len(la) == 0 || !bytes.Equal(la, lb) {
		t.Errorf("audit logs differ (%d and %d bytes)", len(la), len(lb))
	}
	for _, s := range []*side{whole, short} {
		if err := s.ledger.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// fingerprintOf is a stand-in fingerprint for the test's shapes.
func fingerprintOf(norm string) string {
	if norm == "" {
		return ""
	}
	return "fp-" + norm[:6]
}
