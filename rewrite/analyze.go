package rewrite

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/pgveil/pgveil/catalog"
)

// Analyze returns the usage facts and output lineage of sql for s without
// rewriting it: the plan's SQL is the client's text, byte for byte, and
// nothing is refused (raw sessions are not deny-by-default). Text the
// parser rejects yields a plan with Analyzed false and no statements: the
// server will answer with its own error.
func Analyze(sql string, s *Session) (*Plan, error) {
	if s == nil || s.Policy == nil || s.Grants == nil || s.Catalog == nil {
		return nil, ErrNoSession
	}
	return analyzeText(sql, s, false)
}

// analyzeText analyses a raw session's text. With encrypt it also applies
// the write-path encryption rules, which may refuse the text or replace
// literals by placeholders (the plan's SQL is then the deparsed text and
// Rewritten is set).
func analyzeText(sql string, s *Session, encrypt bool) (*Plan, error) {
	plan := &Plan{SQL: sql}
	tree, err := pg_query.Parse(sql)
	if err != nil {
		return plan, nil
	}
	plan.Analyzed = true
	literals := 0
	cur := *s
	for _, raw := range tree.Stmts {
		st := Statement{}
		if m := innerMessage(raw.Stmt); m != nil {
			st.Kind = string(m.Descriptor().Name())
		}
		contextChanges(raw.Stmt, &st)
		var enc *encState
		if encrypt {
			enc = &encState{}
		}
		analyzeStatement(raw.Stmt, &cur, &st, enc)
		st.Copy = copyFormatOf(raw.Stmt)
		if enc != nil {
			if err := encryptFacts(raw.Stmt, enc, &literals, &st); err != nil {
				return nil, err
			}
			st.CopyEncrypt = enc.copy
		}
		plan.Statements = append(plan.Statements, st)
		advance(&cur, s, st)
	}
	if err := checkCopies(plan); err != nil {
		return nil, err
	}
	plan.summarise()
	if literals == 0 {
		return plan, nil
	}
	out, err := pg_query.Deparse(tree)
	if err == nil {
		_, err = pg_query.Parse(out)
	}
	if err != nil {
		return nil, refuse("deparse", "the statement cannot be re-serialised safely to encrypt its literals")
	}
	if out, err = splice(out, nil, plan.Statements, literals); err != nil {
		return nil, err
	}
	plan.SQL, plan.Rewritten = out, true
	return plan, nil
}

// advance applies what statement st changed to the session later
// statements of the same text run in.
func advance(cur, s *Session, st Statement) {
	// After a reset the value is unknown here: only pg_catalog is
	// searched, so unqualified names are refused, not guessed.
	switch {
	case st.SearchPath != nil:
		cur.SearchPath = st.SearchPath
	case st.ResetSearchPath:
		cur.SearchPath = []string{}
	}
	switch {
	case st.Role != "":
		cur.User = st.Role
	case st.ResetRole:
		cur.User = s.User
	}
}

// contextChanges fills the fields of st that say how a statement changes
// the session (search_path, role, prepared statements), without judging
// it: the raw-session counterpart of walker.statement.
func contextChanges(n *pg_query.Node, st *Statement) {
	switch x := n.GetNode().(type) {
	case *pg_query.Node_SelectStmt:
		if name, value, ok := setConfigCall(x.SelectStmt); ok && name == "search_path" {
			if path, err := catalog.ParseSearchPath(value); err == nil {
				if path == nil {
					path = []string{}
				}
				st.SearchPath = path
			}
		}
	case *pg_query.Node_VariableSetStmt:
		s := x.VariableSetStmt
		name := strings.ToLower(s.Name)
		switch {
		case s.Kind == pg_query.VariableSetKind_VAR_RESET_ALL:
			st.ResetSearchPath, st.ResetRole = true, true
		case name == "role":
			v, ok := "", false
			if s.Kind == pg_query.VariableSetKind_VAR_SET_VALUE && len(s.Args) == 1 {
				v, ok = constString(s.Args[0])
			}
			if ok && v != "none" {
				st.Role = v
			} else {
				st.ResetRole = true
			}
		case name == "search_path" && s.Kind == pg_query.VariableSetKind_VAR_SET_VALUE:
			path := []string{}
			for _, a := range s.Args {
				if v, ok := constString(a); ok {
					path = append(path, v)
				}
			}
			st.SearchPath = path
		case name == "search_path":
			st.ResetSearchPath = true
		}
	case *pg_query.Node_DiscardStmt:
		if x.DiscardStmt.Target == pg_query.DiscardMode_DISCARD_ALL {
			st.ResetSearchPath, st.ResetRole = true, true
		}
	case *pg_query.Node_PrepareStmt:
		st.Prepares = x.PrepareStmt.Name
	case *pg_query.Node_ExecuteStmt:
		st.Executes = x.ExecuteStmt.Name
	case *pg_query.Node_DeallocateStmt:
		st.Deallocates, st.DeallocateAll = x.DeallocateStmt.Name, x.DeallocateStmt.Isall
	}
}

// noRows are statement kinds that never return rows.
var noRows = map[string]bool{
	"TransactionStmt": true, "VariableSetStmt": true, "DiscardStmt": true, "DeallocateStmt": true,
	"ClosePortalStmt": true, "ListenStmt": true, "UnlistenStmt": true, "NotifyStmt": true,
	"LockStmt": true, "DoStmt": true, "CheckPointStmt": true, "LoadStmt": true,
	"ConstraintsSetStmt": true, "VacuumStmt": true,
}

// analyzeStatement fills st.Uses, st.Outputs, st.OutputsKnown, st.Declares
// and st.Fetches for one top-level statement parsed from the client's
// text. It reads n and never modifies it.
func analyzeStatement(n *pg_query.Node, s *Session, st *Statement, enc *encState) {
	if m := innerMessage(n); m != nil && st.Kind == "" {
		st.Kind = string(m.Descriptor().Name())
	}
	a := newAnalyzer(s)
	a.enc = enc
	top := &scope{}
	var res qres
	rows := false
	switch x := n.GetNode().(type) {
	case *pg_query.Node_SelectStmt:
		res, rows = a.selectQuery(x.SelectStmt, top), x.SelectStmt.IntoClause == nil
		if !rows {
			res.known = true
		}
	case *pg_query.Node_InsertStmt, *pg_query.Node_UpdateStmt, *pg_query.Node_DeleteStmt, *pg_query.Node_MergeStmt:
		res, rows = a.query(n, top), true
	case *pg_query.Node_DeclareCursorStmt:
		st.Declares = x.DeclareCursorStmt.Portalname
		res, rows = a.query(x.DeclareCursorStmt.Query, top), true
	case *pg_query.Node_PrepareStmt:
		res, rows = a.query(x.PrepareStmt.Query, top), true
	case *pg_query.Node_CopyStmt:
		res, rows = a.copyStmt(x.CopyStmt, top)
	case *pg_query.Node_ExplainStmt:
		// EXPLAIN returns one text column ("QUERY PLAN"); EXPLAIN ANALYZE
		// runs the statement, whose uses are recorded as if it ran.
		inner := Statement{}
		analyzeStatement(x.ExplainStmt.Query, s, &inner, enc)
		st.Uses = inner.Uses
		st.Outputs, st.OutputsKnown = []Output{{}}, true
		return
	case *pg_query.Node_CreateTableAsStmt:
		// CREATE TABLE AS and CREATE MATERIALIZED VIEW store the rows.
		r := a.query(x.CreateTableAsStmt.Query, top)
		a.record(consume(r.cols), ClauseWriteSource)
		res.known = true
	case *pg_query.Node_FetchStmt:
		// FETCH and MOVE return the rows of the cursor DECLARE made.
		st.Fetches = x.FetchStmt.Portalname
	case *pg_query.Node_ExecuteStmt:
		// EXECUTE returns the rows of the statement PREPARE made; its
		// parameters are expressions.
		a.generic(n, top, ClauseOther)
	default:
		a.generic(n, top, ClauseOther)
		res.known = noRows[st.Kind] || ddlKinds[st.Kind] ||
			strings.HasPrefix(st.Kind, "Create") || strings.HasPrefix(st.Kind, "Alter") || strings.HasPrefix(st.Kind, "Drop")
	}
	if rows {
		st.Outputs = a.outputs(res)
	}
	st.OutputsKnown = res.known
	if !res.known {
		st.Outputs = nil
	}
	st.Uses = a.finish()
}

// copyStmt analyses COPY: COPY (query) TO and COPY table TO return rows
// (as COPY data); COPY FROM writes into the listed columns.
func (a *analyzer) copyStmt(c *pg_query.CopyStmt, top *scope) (qres, bool) {
	if c.Query != nil {
		return a.query(c.Query, top), true
	}
	if c.Relation == nil {
		return qres{}, false
	}
	it := a.rangeVar(c.Relation)
	var cols []rcol
	if len(c.Attlist) == 0 {
		cols = it.cols
	} else {
		for _, at := range c.Attlist {
			name := at.GetString_().GetSval()
			if col, ok := findCol(it.cols, name); ok {
				cols = append(cols, col)
			} else {
				it.known = false
			}
		}
	}
	if c.IsFrom {
		if a.enc != nil {
			a.copyFrom(c, cols)
		}
		a.record(consume(cols), ClauseWriteTarget)
		a.record(a.expr(c.WhereClause, &scope{parent: top, items: []*item{it}}), ClauseFilter)
		return qres{known: true}, false
	}
	return qres{cols: cols, known: it.known}, true
}

// target makes the item of a DML target relation.
func (a *analyzer) target(rv *pg_query.RangeVar) *item {
	if rv == nil {
		return &item{}
	}
	return a.rangeVar(rv)
}

// writeTargets records ResTarget names (INSERT column list, SET) as
// ClauseWriteTarget columns of it.
func (a *analyzer) writeTargets(it *item, list []*pg_query.Node) {
	for _, t := range list {
		if rt := t.GetResTarget(); rt != nil {
			if c, ok := findCol(it.cols, rt.Name); ok {
				a.record(use(c), ClauseWriteTarget)
			}
		}
	}
}

// setList records an UPDATE SET list: targets and source expressions.
func (a *analyzer) setList(it *item, list []*pg_query.Node, sc *scope) {
	a.writeTargets(it, list)
	for _, t := range list {
		if rt := t.GetResTarget(); rt != nil {
			for _, ind := range rt.Indirection {
				a.record(a.expr(ind, sc), ClauseOther)
			}
			a.record(a.expr(rt.Val, sc), ClauseWriteSource)
		}
	}
}

func (a *analyzer) insertStmt(s *pg_query.InsertStmt, parent *scope) qres {
	if s.WithClause != nil {
		a.pushCTEs(s.WithClause, parent)
		defer a.popCTEs()
	}
	it := a.target(s.Relation)
	targets := it.cols
	if len(s.Cols) == 0 {
		a.record(consume(it.cols), ClauseWriteTarget)
	} else {
		a.writeTargets(it, s.Cols)
		targets = nil
		for _, t := range s.Cols {
			c, _ := findCol(it.cols, t.GetResTarget().GetName())
			if c.st == nil || len(t.GetResTarget().GetIndirection()) > 0 {
				c = rcol{st: &colState{}}
			}
			targets = append(targets, c)
		}
	}
	if s.SelectStmt != nil {
		res := a.query(s.SelectStmt, parent)
		if a.enc != nil {
			a.insertSource(targets, s.SelectStmt, res)
		}
		a.record(consume(res.cols), ClauseWriteSource)
	}
	sc := &scope{parent: parent, items: []*item{it}}
	if oc := s.OnConflictClause; oc != nil {
		if inf := oc.Infer; inf != nil {
			for _, e := range inf.IndexElems {
				if ie := e.GetIndexElem(); ie != nil {
					if ie.Name != "" {
						if c, ok := findCol(it.cols, ie.Name); ok {
							a.record(use(c), ClauseFilter)
						}
					}
					a.record(a.expr(ie.Expr, sc), ClauseFilter)
				}
			}
			a.record(a.expr(inf.WhereClause, sc), ClauseFilter)
		}
		// EXCLUDED is the row proposed for insertion, with the target's
		// columns.
		ex := &rte{name: "excluded", cols: it.cols, known: it.known, fallback: it.fallback}
		withEx := &scope{parent: parent, items: []*item{it, {rtes: []*rte{ex}}}}
		a.setList(it, oc.TargetList, withEx)
		if a.enc != nil {
			a.setValues(it, oc.TargetList, withEx)
		}
		a.record(a.expr(oc.WhereClause, withEx), ClauseFilter)
	}
	return a.targets(s.ReturningList, sc)
}

func (a *analyzer) updateStmt(s *pg_query.UpdateStmt, parent *scope) qres {
	if s.WithClause != nil {
		a.pushCTEs(s.WithClause, parent)
		defer a.popCTEs()
	}
	it := a.target(s.Relation)
	sc := &scope{parent: parent, items: []*item{it}}
	a.fromList(s.FromClause, sc)
	a.setList(it, s.TargetList, sc)
	if a.enc != nil {
		a.setValues(it, s.TargetList, sc)
	}
	a.record(a.expr(s.WhereClause, sc), ClauseFilter)
	return a.targets(s.ReturningList, sc)
}

func (a *analyzer) deleteStmt(s *pg_query.DeleteStmt, parent *scope) qres {
	if s.WithClause != nil {
		a.pushCTEs(s.WithClause, parent)
		defer a.popCTEs()
	}
	it := a.target(s.Relation)
	sc := &scope{parent: parent, items: []*item{it}}
	a.fromList(s.UsingClause, sc)
	a.record(a.expr(s.WhereClause, sc), ClauseFilter)
	return a.targets(s.ReturningList, sc)
}

func (a *analyzer) mergeStmt(s *pg_query.MergeStmt, parent *scope) qres {
	if s.WithClause != nil {
		a.pushCTEs(s.WithClause, parent)
		defer a.popCTEs()
	}
	it := a.target(s.Relation)
	sc := &scope{parent: parent, items: []*item{it}}
	a.fromList([]*pg_query.Node{s.SourceRelation}, sc)
	a.record(a.expr(s.JoinCondition, sc), ClauseJoin)
	for _, w := range s.MergeWhenClauses {
		mw := w.GetMergeWhenClause()
		if mw == nil {
			a.generic(w, sc, ClauseOther)
			continue
		}
		a.record(a.expr(mw.Condition, sc), ClauseFilter)
		switch mw.CommandType {
		case pg_query.CmdType_CMD_UPDATE:
			a.setList(it, mw.TargetList, sc)
			if a.enc != nil {
				a.setValues(it, mw.TargetList, sc)
			}
		case pg_query.CmdType_CMD_INSERT:
			targets := it.cols
			if len(mw.TargetList) == 0 {
				a.record(consume(it.cols), ClauseWriteTarget)
			} else {
				a.writeTargets(it, mw.TargetList)
				targets = nil
				for _, t := range mw.TargetList {
					c, ok := findCol(it.cols, t.GetResTarget().GetName())
					if !ok {
						c = rcol{st: &colState{}}
					}
					targets = append(targets, c)
				}
			}
			if a.enc != nil {
				for i, t := range targets {
					if col, ok := encryptedTarget(t); ok && i < len(mw.Values) {
						l := a.expr(mw.Values[i], sc)
						a.storeValue(col, mw.Values[i], &l)
					}
				}
			}
			for _, v := range mw.Values {
				a.record(a.expr(v, sc), ClauseWriteSource)
			}
		}
	}
	return a.targets(s.ReturningList, sc)
}
