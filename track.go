package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"time"

	"github.com/pgveil/pgveil/admin"
	"github.com/pgveil/pgveil/audit"
	"github.com/pgveil/pgveil/proxy"
	"github.com/pgveil/pgveil/rewrite"
	"github.com/pgveil/pgveil/rules"
	"github.com/pgveil/pgveil/usage"
)

// statementSink feeds the proxy's statement events to the usage ledger
// and the audit log (either may be nil). Sessions get their own sink
// (SessionSink), which holds what is the same for all their statements
// converted once: the ledger's handle and the audit log's session
// members. What is the same for all runs of one statement (the ledger's
// column uses, the audit log's fingerprint, SQL and columns) is converted
// once per analysed statement and kept in the event's Memo.
type statementSink struct {
	ledger *usage.Ledger
	audit  *audit.Writer
}

// Blocks reports whether the sink may wait: with the audit log's block
// policy, a statement waits for room in its queue (proxy.BlockingSink).
func (s *statementSink) Blocks() bool {
	return s.audit != nil && s.audit.Blocks()
}

// SessionSink returns the sink for the statements of one session.
func (s *statementSink) SessionSink(base *proxy.StatementEvent) proxy.StatementSink {
	ss := &sessionSink{}
	if s.ledger != nil {
		ss.ledger = s.ledger.Session(base.Database, base.User, base.Roles, base.Application)
	}
	if s.audit != nil {
		ss.audit = s.audit
		newSession := audit.NewSession
		if base.Loop {
			// One goroutine at a time (the io_uring loop's handoff) writes
			// the statements of all such sessions.
			newSession = audit.NewLoopSession
		}
		ss.session = newSession(strconv.FormatUint(base.Session, 10), base.User, base.Roles, base.ClientIP, base.Database, base.Application)
	}
	return ss
}

// Statement records ev for a sink that no session owns; the proxy calls
// SessionSink's sinks instead.
func (s *statementSink) Statement(ev *proxy.StatementEvent) {
	ss := s.SessionSink(ev).(*sessionSink)
	ss.Statement(ev)
	ss.End()
}

// sessionSink is one session's statementSink.
type sessionSink struct {
	ledger  *usage.Session // nil without a ledger
	audit   *audit.Writer  // nil without an audit log
	session *audit.Session
	st      audit.Statement // reused: WriteStatement copies it
}

// End adds what the session's ledger handle still counts to the ledger.
func (s *sessionSink) End() {
	if s.ledger != nil {
		s.ledger.End()
	}
}

// forms are the ledger's and the audit log's forms of one statement, per
// treatment of its columns: as planned, or refused. A forms value is
// immutable once stored in a Memo; a missing form is added by storing a
// copy. planned says the forms as planned (uses, which may be nil, and
// shape) are made, as the sink's ledger and audit log need them. What Ran
// reads comes first, in one cache line.
type forms struct {
	planned      bool
	shape        *audit.Shape
	uses         []usage.ColumnUse
	shapeRefused *audit.Shape
	usesRefused  []usage.ColumnUse
}

// Ran records a statement that succeeded from its memo alone, when the
// memo holds the forms as planned (proxy.RanSink).
func (s *sessionSink) Ran(m *proxy.Memo, start time.Time, d time.Duration, rows int64) bool {
	f, _ := m.Load().(*forms)
	if f == nil || !f.planned {
		return false
	}
	if s.ledger != nil && len(f.uses) > 0 {
		s.ledger.Record(start, f.uses, rows, true)
	}
	if s.audit != nil {
		s.audit.WriteStatement(&audit.Statement{Time: start, Session: s.session, Shape: f.shape, Rows: rows, Duration: d, Outcome: audit.OutcomeOK})
	}
	return true
}

func (s *sessionSink) Statement(ev *proxy.StatementEvent) {
	refused := ev.Outcome == "refused"
	var f *forms
	if ev.Memo != nil {
		f, _ = ev.Memo.Load().(*forms)
	}
	if f == nil {
		f = &forms{}
	}
	uses, shape := f.uses, f.shape
	if refused {
		uses, shape = f.usesRefused, f.shapeRefused
	}
	missing := s.ledger != nil && uses == nil && len(ev.Uses) > 0 || s.audit != nil && shape == nil
	if missing {
		nf := *f
		if s.ledger != nil && uses == nil && len(ev.Uses) > 0 {
			uses = ledgerUses(ev.Uses, refused)
			if refused {
				nf.usesRefused = uses
			} else {
				nf.uses = uses
			}
		}
		if s.audit != nil && shape == nil {
			shape = audit.NewShape(ev.Fingerprint, ev.Normalized, auditColumns(ev.Uses, refused))
			if refused {
				nf.shapeRefused = shape
			} else {
				nf.shape = shape
			}
		}
		if !refused {
			nf.planned = true // this call made what the ledger and the audit log need
		}
		if ev.Memo != nil {
			ev.Memo.Store(&nf)
		}
	}
	if s.ledger != nil && len(uses) > 0 {
		s.ledger.Record(ev.Start, uses, ev.Rows, ev.Outcome == "ok")
	}
	if s.audit != nil {
		st := &s.st
		*st = audit.Statement{Time: ev.Start, Session: s.session, Shape: shape, Rows: ev.Rows, Duration: ev.Duration,
			Outcome: audit.Outcome(ev.Outcome), SQLState: ev.SQLState, Rule: ev.Rule}
		if ev.Outcome == "ok" {
			st.SQLState = ""
		}
		s.audit.WriteStatement(st)
	}
}

// auditColumns converts the classified columns of a statement for the
// audit log.
func auditColumns(uses []rewrite.ColumnUse, refused bool) []audit.Column {
	var out []audit.Column
	for _, u := range uses {
		if u.Rule == nil {
			continue
		}
		t := ledgerTreatment(u.Treatment, refused)
		out = append(out, audit.Column{Table: u.Column.Schema + "." + u.Column.Table, Column: u.Column.Column,
			Treatment: audit.Treatment(t.String()), Clauses: clauseList(u.Clauses)})
	}
	return out
}

// ledgerUses converts the uses of a statement for the ledger.
func ledgerUses(uses []rewrite.ColumnUse, refused bool) []usage.ColumnUse {
	out := make([]usage.ColumnUse, len(uses))
	for i, u := range uses {
		out[i] = usage.ColumnUse{Schema: u.Column.Schema, Table: u.Column.Table, Column: u.Column.Column,
			Clauses: ledgerClauses(u.Clauses), Treatment: ledgerTreatment(u.Treatment, refused)}
	}
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
	sink = &statementSink{}
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
