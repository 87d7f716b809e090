package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/pgveil/pgveil/admin"
	"github.com/pgveil/pgveil/audit"
	"github.com/pgveil/pgveil/proxy"
	"github.com/pgveil/pgveil/rewrite"
	"github.com/pgveil/pgveil/rules"
	"github.com/pgveil/pgveil/usage"
)

// statementSink feeds the proxy's statement events to the usage ledger
// and the audit log (either may be nil).
type statementSink struct {
	ledger *usage.Ledger
	audit  *audit.Writer

	// uses caches the ledger's form of a plan's column uses: plans are
	// immutable and shared, so each is converted once.
	mu   sync.Mutex
	uses map[usesKey][]usage.ColumnUse
	st   usage.Statement
	// cols caches the audit form of a plan's classified columns the same
	// way (the audit writer only reads them).
	cols map[usesKey][]audit.Column
}

type usesKey struct {
	first   *rewrite.ColumnUse
	n       int
	refused bool
}

func (s *statementSink) Statement(ev *proxy.StatementEvent) {
	if s.ledger != nil && len(ev.Uses) > 0 {
		s.mu.Lock()
		st := &s.st
		*st = usage.Statement{Time: ev.Start, Database: ev.Database, User: ev.User, Roles: ev.Roles,
			Application: ev.Application, Columns: s.ledgerUses(ev), Rows: ev.Rows, OK: ev.Outcome == "ok"}
		s.ledger.Record(st)
		s.mu.Unlock()
	}
	if s.audit != nil {
		r := auditRecord(ev)
		if len(ev.Uses) > 0 {
			s.mu.Lock()
			r.Columns = s.auditColumns(ev)
			s.mu.Unlock()
		}
		s.audit.Write(r)
	}
}

// auditColumns converts (once per plan) the classified columns of ev for
// the audit log.
func (s *statementSink) auditColumns(ev *proxy.StatementEvent) []audit.Column {
	k := usesKey{first: &ev.Uses[0], n: len(ev.Uses), refused: ev.Outcome == "refused"}
	if c, ok := s.cols[k]; ok {
		return c
	}
	var out []audit.Column
	for _, u := range ev.Uses {
		if u.Rule == nil {
			continue
		}
		t := ledgerTreatment(u.Treatment, k.refused)
		out = append(out, audit.Column{Table: u.Column.Schema + "." + u.Column.Table, Column: u.Column.Column,
			Treatment: audit.Treatment(t.String()), Clauses: clauseList(u.Clauses)})
	}
	if len(s.cols) > 50000 {
		clear(s.cols)
	}
	s.cols[k] = out
	return out
}

// ledgerUses converts (once per plan) the uses of ev for the ledger.
func (s *statementSink) ledgerUses(ev *proxy.StatementEvent) []usage.ColumnUse {
	k := usesKey{first: &ev.Uses[0], n: len(ev.Uses), refused: ev.Outcome == "refused"}
	if u, ok := s.uses[k]; ok {
		return u
	}
	out := make([]usage.ColumnUse, len(ev.Uses))
	for i, u := range ev.Uses {
		out[i] = usage.ColumnUse{Schema: u.Column.Schema, Table: u.Column.Table, Column: u.Column.Column,
			Clauses: ledgerClauses(u.Clauses), Treatment: ledgerTreatment(u.Treatment, k.refused)}
	}
	if len(s.uses) > 50000 {
		clear(s.uses)
	}
	s.uses[k] = out
	return out
}

// ledgerClauses maps the analysis's clause kinds onto the ledger's: a
// value stored elsewhere (INSERT ... SELECT) is read like an output; the
// kinds the ledger does not count (other) add nothing.
func ledgerClauses(c rewrite.ClauseSet) usage.ClauseSet {
	var out usage.ClauseSet
	for _, m := range [...]struct {
		from rewrite.ClauseSet
		to   usage.ClauseSet
	}{
		{rewrite.ClauseOutput, usage.Output}, {rewrite.ClauseWriteSource, usage.Output},
		{rewrite.ClauseFilter, usage.Filter}, {rewrite.ClauseJoin, usage.Join},
		{rewrite.ClauseGroupOrder, usage.GroupOrder}, {rewrite.ClauseAggregateArg, usage.AggregateArg},
		{rewrite.ClauseWriteTarget, usage.WriteTarget},
	} {
		if c&m.from != 0 {
			out |= m.to
		}
	}
	return out
}

func ledgerTreatment(t rules.Treatment, refused bool) usage.Treatment {
	switch {
	case refused:
		return usage.Refused
	case t == rules.TreatMask:
		return usage.Masked
	case t == rules.TreatDecrypt:
		return usage.Decrypted
	}
	return usage.Raw
}

// auditRecord builds the audit line of ev: the classified columns it
// touched, never a value.
func auditRecord(ev *proxy.StatementEvent) *audit.Record {
	r := &audit.Record{
		Time: ev.Start, Session: strconv.FormatUint(ev.Session, 10), User: ev.User, Roles: ev.Roles,
		Client: ev.ClientIP, Database: ev.Database, Application: ev.Application,
		Fingerprint: ev.Fingerprint, SQL: ev.Normalized, Rows: ev.Rows, Duration: ev.Duration,
		Outcome: audit.Outcome(ev.Outcome), SQLState: ev.SQLState, Rule: ev.Rule,
	}
	if ev.Outcome == "ok" {
		r.SQLState = ""
	}
	return r
}

func clauseList(c rewrite.ClauseSet) []string {
	var out []string
	for i := range 8 {
		if bit := rewrite.ClauseSet(1) << i; c&bit != 0 {
			out = append(out, bit.String())
		}
	}
	return out
}

// startTracking opens the usage store and ledger and the audit log that
// the flags ask for; close flushes them.
func startTracking(ctx context.Context, f *serveFlags, metrics *admin.Metrics, log *slog.Logger) (sink *statementSink, closeAll func(context.Context), err error) {
	if f.usageStore == "" && f.auditLog == "" {
		return nil, func(context.Context) {}, nil
	}
	if f.policy == "" {
		return nil, nil, usagef("--usage-store and --audit-log need --policy (the catalog and the classification come with it)")
	}
	sink = &statementSink{uses: map[usesKey][]usage.ColumnUse{}, cols: map[usesKey][]audit.Column{}}
	var closers []func(context.Context)
	closeAll = func(ctx context.Context) {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i](ctx)
		}
	}
	if f.usageStore != "" {
		octx, cancel := context.WithTimeout(ctx, 30*time.Second)
		store, err := usage.Open(octx, f.usageStore)
		cancel()
		if err != nil {
			return nil, nil, usagef("--usage-store: %v", err)
		}
		ledger, err := usage.New(usage.Config{Store: store, FlushInterval: f.usageFlush, Logger: log.With("component", "usage"), Observer: usageObserver{metrics}})
		if err != nil {
			store.Close()
			return nil, nil, usagef("--usage-store: %v", err)
		}
		sink.ledger = ledger
		closers = append(closers, func(ctx context.Context) {
			if err := ledger.Close(ctx); err != nil {
				log.Error("usage ledger: final flush failed", "err", err)
			}
			store.Close()
		})
		log.Info("usage ledger", "store", redactStore(f.usageStore), "flush", f.usageFlush)
	}
	if f.auditLog != "" {
		w, err := audit.New(audit.Config{Path: f.auditLog, KeyFile: f.auditKeyFile, MaxSize: f.auditMaxSize, OnFull: f.auditOnFull, FlushInterval: f.auditFlush,
			Observer: auditObserver{metrics}, Logger: log.With("component", "audit")})
		if err != nil {
			closeAll(ctx)
			return nil, nil, usagef("--audit-log: %v", err)
		}
		sink.audit = w
		// The head of the chain, logged every minute and at the end, is
		// the anchor that makes a cut tail detectable
		// (pgveil audit verify --expect-head SEQ:HASH).
		stopAnchor := make(chan struct{})
		go func() {
			t := time.NewTicker(time.Minute)
			defer t.Stop()
			for {
				select {
				case <-stopAnchor:
					return
				case <-t.C:
					seq, hash := w.Head()
					log.Info("audit head", "anchor", fmt.Sprintf("%d:%s", seq, hash))
				}
			}
		}()
		closers = append(closers, func(ctx context.Context) {
			close(stopAnchor)
			if err := w.Close(ctx); err != nil {
				log.Error("audit log: close", "err", err)
			}
			seq, hash := w.Head()
			log.Info("audit log closed", "anchor", fmt.Sprintf("%d:%s", seq, hash))
		})
		log.Info("audit log", "path", f.auditLog, "hmac", f.auditKeyFile != "")
	}
	return sink, closeAll, nil
}

// redactStore hides a password in a store URL for the log.
func redactStore(s string) string {
	if u, err := url.Parse(s); err == nil && u.User != nil {
		if _, ok := u.User.Password(); ok {
			return u.Redacted()
		}
	}
	return s
}

// usageObserver exports the ledger's counts as metrics.
type usageObserver struct{ m *admin.Metrics }

func (o usageObserver) Flushed(fs usage.FlushStats) {
	o.m.UsageFlushed(fs.Err == nil, fs.PendingKeys, fs.DroppedStatements)
}

func (o usageObserver) ColumnUse(schema, table, column string, t usage.Treatment, n int64) {
	// n counts statements since the previous flush.
	o.m.ColumnUse(schema+"."+table, column, t.String(), n)
}

// auditObserver exports the audit writer's counts as metrics.
type auditObserver struct{ m *admin.Metrics }

func (o auditObserver) Written(n int)     { o.m.Audit("written", n) }
func (o auditObserver) Dropped(n int)     { o.m.Audit("dropped", n) }
func (o auditObserver) Error(kind string) { o.m.AuditError(kind) }
func (o auditObserver) Rotated()          { o.m.Audit("rotated", 1) }
