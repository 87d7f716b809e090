package rewrite

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/pgveil/pgveil/catalog"
	"github.com/pgveil/pgveil/rules"
)

// statement checks one top-level statement against the allow-list of
// DESIGN.md §2 rule 2 and rewrites it.
func (w *walker) statement(n *pg_query.Node) (Statement, error) {
	st := Statement{}
	if n == nil || n.Node == nil {
		return st, refuse("unsupported-syntax", "empty statement")
	}
	m := innerMessage(n)
	st.Kind = string(m.Descriptor().Name())
	var err error
	switch x := n.Node.(type) {
	case *pg_query.Node_SelectStmt:
		if name, value, ok := setConfigCall(x.SelectStmt); ok {
			// SELECT set_config('name', 'value', is_local) with constant
			// arguments, as pg_dump sends it, is a SET. Its names are
			// pinned to the catalog: with search_path = x, pg_catalog a
			// relation x.pg_settings or a function x.set_config would
			// otherwise run unanalysed.
			pinSetConfig(x.SelectStmt)
			err = w.setConfig(name, value, &st)
			break
		}
		err = w.selectStmt(x.SelectStmt)
	case *pg_query.Node_LockStmt:
		// pg_dump takes ACCESS SHARE locks on what it dumps; that mode only
		// conflicts with ACCESS EXCLUSIVE and reveals nothing.
		if x.LockStmt.Mode != 1 { // AccessShareLock, src/include/storage/lockdefs.h
			err = refuse("statement", "LOCK is allowed for masked sessions in ACCESS SHARE mode only")
			break
		}
		for _, r := range x.LockStmt.Relations {
			rv := r.GetRangeVar()
			if rv == nil {
				err = refuse("unsupported-syntax", "unexpected LOCK target")
				break
			}
			if rel := w.resolve(rv); rel != nil {
				rv.Schemaname = rel.Name.Schema
			}
		}
	case *pg_query.Node_InsertStmt, *pg_query.Node_UpdateStmt, *pg_query.Node_DeleteStmt:
		err = w.node(n)
	case *pg_query.Node_ExecuteStmt:
		st.Executes = x.ExecuteStmt.Name
		err = w.fields(m, nil)
	case *pg_query.Node_DeallocateStmt:
		st.Deallocates, st.DeallocateAll = x.DeallocateStmt.Name, x.DeallocateStmt.Isall
	case *pg_query.Node_TransactionStmt, *pg_query.Node_VariableShowStmt,
		*pg_query.Node_FetchStmt, *pg_query.Node_ClosePortalStmt:
		// Transaction control, SHOW, cursor movement and EXECUTE carry
		// only options, names and parameter expressions.
		err = w.fields(m, nil)
	case *pg_query.Node_NotifyStmt:
		// NOTIFY sends only what the session itself can see.
	case *pg_query.Node_DeclareCursorStmt:
		err = w.node(x.DeclareCursorStmt.Query)
	case *pg_query.Node_PrepareStmt:
		st.Prepares = x.PrepareStmt.Name
		for _, a := range x.PrepareStmt.Argtypes {
			if err = w.node(a); err != nil {
				break
			}
		}
		if err == nil {
			err = w.node(x.PrepareStmt.Query)
		}
	case *pg_query.Node_CopyStmt:
		err = w.copyStmt(x.CopyStmt)
	case *pg_query.Node_ExplainStmt:
		w.explain = true
		err = w.node(x.ExplainStmt.Query)
		if err == nil {
			err = w.fields(x.ExplainStmt.ProtoReflect(), map[protoreflect.Name]bool{"query": true})
		}
	case *pg_query.Node_VariableSetStmt:
		err = w.setStmt(x.VariableSetStmt, &st)
	case *pg_query.Node_DiscardStmt:
		if x.DiscardStmt.Target == pg_query.DiscardMode_DISCARD_ALL {
			// DISCARD ALL is also DEALLOCATE ALL.
			st.ResetSearchPath, st.ResetRole, st.DeallocateAll = true, true, true
		}
	case *pg_query.Node_ListenStmt:
		err = refuse("listen", "LISTEN is not allowed for masked sessions: notification payloads are not masked")
	case *pg_query.Node_DoStmt, *pg_query.Node_CallStmt:
		err = refuse("procedural", "DO and CALL run code pgveil cannot analyse and are not allowed for masked sessions")
	case *pg_query.Node_CreateTableAsStmt:
		err = refuse("ddl", "CREATE TABLE AS is not allowed for masked sessions")
	default:
		if ddlKinds[st.Kind] || strings.HasPrefix(st.Kind, "Create") || strings.HasPrefix(st.Kind, "Alter") || strings.HasPrefix(st.Kind, "Drop") {
			err = refuse("ddl", "DDL is not allowed for masked sessions")
		} else {
			err = refuse("statement", "this kind of statement (%s) is not allowed for masked sessions", st.Kind)
		}
	}
	if err == nil {
		err = w.finish()
	}
	return st, err
}

// ddlKinds are statements that change the schema or privileges without a
// Create/Alter/Drop name.
var ddlKinds = map[string]bool{
	"ViewStmt": true, "GrantStmt": true, "GrantRoleStmt": true, "TruncateStmt": true,
	"IndexStmt": true, "RuleStmt": true, "CommentStmt": true, "SecLabelStmt": true,
	"RenameStmt": true, "DefineStmt": true, "CompositeTypeStmt": true, "ReindexStmt": true,
	"ClusterStmt": true, "RefreshMatViewStmt": true, "ImportForeignSchemaStmt": true,
	"ReassignOwnedStmt": true, "CreatedbStmt": true, "DropdbStmt": true, "DropOwnedStmt": true,
}

// setConfigCall recognises SELECT [pg_catalog.]set_config('name', 'value',
// bool) with nothing else in the statement.
//
// pg_dump (15.8 and later) also sends SELECT set_config(name, 'value',
// false) FROM pg_settings WHERE name = 'setting', which is the same thing.
func setConfigCall(s *pg_query.SelectStmt) (name, value string, ok bool) {
	if len(s.TargetList) != 1 || s.WithClause != nil || s.Op != pg_query.SetOperation_SETOP_NONE ||
		len(s.GroupClause) != 0 || s.HavingClause != nil || len(s.SortClause) != 0 || s.LimitCount != nil {
		return "", "", false
	}
	fromSettings := ""
	switch {
	case len(s.FromClause) == 0 && s.WhereClause == nil:
	case len(s.FromClause) == 1:
		rv := s.FromClause[0].GetRangeVar()
		if rv == nil || rv.Relname != "pg_settings" || (rv.Schemaname != "" && rv.Schemaname != "pg_catalog") || rv.Alias != nil {
			return "", "", false
		}
		e := s.WhereClause.GetAExpr()
		if e == nil || e.Kind != pg_query.A_Expr_Kind_AEXPR_OP || len(e.Name) != 1 || e.Name[0].GetString_().GetSval() != "=" {
			return "", "", false
		}
		c := e.Lexpr.GetColumnRef()
		v, isConst := constString(e.Rexpr)
		if c == nil || len(c.Fields) != 1 || c.Fields[0].GetString_().GetSval() != "name" || !isConst {
			return "", "", false
		}
		fromSettings = v
	default:
		return "", "", false
	}
	rt := s.TargetList[0].GetResTarget()
	if rt == nil {
		return "", "", false
	}
	f := rt.Val.GetFuncCall()
	if f == nil || len(f.Args) != 3 || f.AggStar || f.Over != nil || f.AggFilter != nil {
		return "", "", false
	}
	switch len(f.Funcname) {
	case 1:
	case 2:
		if f.Funcname[0].GetString_().GetSval() != "pg_catalog" {
			return "", "", false
		}
	default:
		return "", "", false
	}
	if f.Funcname[len(f.Funcname)-1].GetString_().GetSval() != "set_config" {
		return "", "", false
	}
	name, ok1 := constString(f.Args[0])
	if fromSettings != "" {
		c := f.Args[0].GetColumnRef()
		name, ok1 = fromSettings, c != nil && len(c.Fields) == 1 && c.Fields[0].GetString_().GetSval() == "name"
	}
	value, ok2 := constString(f.Args[1])
	_, ok3 := constString(f.Args[2])
	if !ok1 || !ok2 || !ok3 {
		return "", "", false
	}
	return strings.ToLower(name), value, true
}

// pinSetConfig qualifies the function, the relation and the operator of
// a statement setConfigCall recognised with pg_catalog.
func pinSetConfig(s *pg_query.SelectStmt) {
	if f := s.TargetList[0].GetResTarget().GetVal().GetFuncCall(); f != nil {
		f.Funcname = pinned(f.Funcname[len(f.Funcname)-1:])
	}
	if len(s.FromClause) == 1 {
		if rv := s.FromClause[0].GetRangeVar(); rv != nil {
			rv.Schemaname = "pg_catalog"
		}
		if e := s.WhereClause.GetAExpr(); e != nil {
			e.Name = pinned(e.Name)
		}
	}
}

// setConfig applies SET's rules to a set_config call.
func (w *walker) setConfig(name, value string, st *Statement) error {
	if ok, pinned := pinnedSettings[name]; pinned {
		if ok != nil && ok(strings.ToLower(value)) {
			return nil
		}
		return refuse("pinned-setting", "%s is pinned by pgveil for masked sessions and cannot be changed", name)
	}
	if name == "search_path" {
		path, err := catalog.ParseSearchPath(value)
		if err != nil {
			return refuse("unsupported-syntax", "unexpected search_path value")
		}
		if path == nil {
			path = []string{}
		}
		st.SearchPath = path
	}
	return nil
}

// pinnedSettings may not be changed by masked sessions: the proxy must parse
// exactly what the server parses (DESIGN.md §2 rule 3).
var pinnedSettings = map[string]func(v string) bool{
	"standard_conforming_strings": func(v string) bool { return v == "on" || v == "true" || v == "1" || v == "yes" },
	"client_encoding": func(v string) bool {
		v = strings.ToLower(strings.ReplaceAll(v, "-", ""))
		return v == "utf8" || v == "unicode"
	},
	"session_authorization": nil,
}

// setStmt allows SET except for pinned settings, and records search_path
// changes. SET ROLE is allowed: a session's policy already comes from its
// login user and every role it is a member of, so switching to one of
// those roles cannot widen what it sees.
func (w *walker) setStmt(s *pg_query.VariableSetStmt, st *Statement) error {
	name := strings.ToLower(s.Name)
	switch s.Kind {
	case pg_query.VariableSetKind_VAR_RESET_ALL:
		st.ResetSearchPath, st.ResetRole = true, true
		return nil
	case pg_query.VariableSetKind_VAR_SET_MULTI:
		// SET TRANSACTION / SESSION CHARACTERISTICS.
		return w.fields(s.ProtoReflect(), nil)
	}
	if ok, pinned := pinnedSettings[name]; pinned {
		if s.Kind == pg_query.VariableSetKind_VAR_SET_VALUE && ok != nil && len(s.Args) == 1 {
			if v, isStr := constString(s.Args[0]); isStr && ok(strings.ToLower(v)) {
				return nil
			}
		}
		return refuse("pinned-setting", "%s is pinned by pgveil for masked sessions and cannot be changed", name)
	}
	if name == "role" {
		v, ok := "", false
		if s.Kind == pg_query.VariableSetKind_VAR_SET_VALUE && len(s.Args) == 1 {
			v, ok = constString(s.Args[0])
		}
		if ok && v != "none" {
			st.Role = v
		} else {
			st.ResetRole = true
		}
		return nil
	}
	if name == "search_path" {
		switch s.Kind {
		case pg_query.VariableSetKind_VAR_SET_VALUE:
			for _, a := range s.Args {
				v, ok := constString(a)
				if !ok {
					return refuse("unsupported-syntax", "unexpected search_path value")
				}
				st.SearchPath = append(st.SearchPath, v)
			}
		default:
			st.ResetSearchPath = true
		}
		return nil
	}
	return w.fields(s.ProtoReflect(), nil)
}

// constString returns the text of a string or identifier constant.
func constString(n *pg_query.Node) (string, bool) {
	c := n.GetAConst()
	if c == nil {
		return "", false
	}
	switch v := c.Val.(type) {
	case *pg_query.A_Const_Sval:
		return v.Sval.Sval, true
	case *pg_query.A_Const_Ival:
		return "", false
	case *pg_query.A_Const_Boolval:
		if v.Boolval.Boolval {
			return "on", true
		}
		return "off", true
	}
	return "", false
}

// target resolves a DML target and reports whether it is protected.
func (w *walker) target(rv *pg_query.RangeVar) (*catalog.Relation, bool, error) {
	if rv == nil {
		return nil, false, refuse("unsupported-syntax", "missing target relation")
	}
	rel := w.resolve(rv)
	if rel == nil {
		return nil, false, refuse("catalog", "relation %q does not exist on the search_path, or is newer than pgveil's catalog snapshot (retry shortly)", rv.Relname)
	}
	rv.Schemaname = rel.Name.Schema
	switch rel.Name.Schema {
	case "pg_catalog", "information_schema", "pg_toast":
		// The catalogs' writable views run rules the rewrite does not
		// see: UPDATE pg_settings calls set_config, changing search_path
		// or a pinned setting behind the proxy's back.
		return nil, false, refuse("statement", "writes to %s are not allowed for masked sessions", qualified(rel.Name))
	}
	if rel.Kind == catalog.KindView || rel.Kind == catalog.KindMatView {
		if _, _, err := w.buildProjection(rel, true); err != nil {
			return nil, false, err
		}
	}
	protected := w.protectedFor(rel)
	if protected && w.explain {
		return nil, false, refuse("explain", "EXPLAIN over a protected relation (%s) is not allowed: planner estimates come from raw statistics", qualified(rel.Name))
	}
	return rel, protected, nil
}

// assignsMasked refuses a write that stores into a masked column of a
// protected table: unique and check constraints on the raw column would
// then answer whether a value exists (SQLSTATE 23505 or success).
func (w *walker) assignsMasked(rel *catalog.Relation, cols []string, verb string) error {
	masked := w.maskedColumns(rel)
	for _, c := range cols {
		if masked[c] {
			return refuse("protected-write", "%s on %s may not write masked column %q: its constraints would reveal raw values", verb, qualified(rel.Name), c)
		}
	}
	return nil
}

// referencedOracle refuses a DELETE from rel, or an UPDATE of its
// columns cols, when a foreign key whose referencing columns are masked
// for the session points at them: the cascade (rows of the referencing
// table vanish or change) or the violation (23503) would tell which raw
// values the referencing rows hold.
func (w *walker) referencedOracle(rel *catalog.Relation, cols []string, verb string) error {
	assigned := map[string]bool{}
	for _, c := range cols {
		assigned[c] = true
	}
	for _, r := range w.s.Catalog.Relations() {
		for _, fk := range r.ForeignKeys {
			if fk.References != rel.Name {
				continue
			}
			masked := w.maskedColumns(r)
			filtered := w.rowFiltered(r)
			for i, c := range fk.Columns {
				if i >= len(fk.RefColumns) || (verb != "DELETE" && !assigned[fk.RefColumns[i]]) {
					continue
				}
				if masked[c] {
					return refuse("protected-write", "%s on %s is not allowed: the foreign key of masked column %s.%s references it", verb, qualified(rel.Name), qualified(r.Name), c)
				}
				if filtered {
					return refuse("protected-write", "%s on %s is not allowed: a foreign key of %s, which a row filter applies to, references it", verb, qualified(rel.Name), qualified(r.Name))
				}
			}
		}
	}
	return nil
}

// foreignKeyOracle refuses a write that stores into a foreign key whose
// referenced columns are masked for the session: whether the write
// succeeds would tell whether the raw value exists.
func (w *walker) foreignKeyOracle(rel *catalog.Relation, cols []string, verb string) error {
	assigned := map[string]bool{}
	for _, c := range cols {
		assigned[c] = true
	}
	for _, fk := range rel.ForeignKeys {
		ref := w.s.Catalog.Relation(fk.References)
		if ref == nil {
			continue
		}
		masked := w.maskedColumns(ref)
		filtered := w.rowFiltered(ref)
		for i, rc := range fk.RefColumns {
			if i >= len(fk.Columns) || !assigned[fk.Columns[i]] {
				continue
			}
			if masked[rc] {
				return refuse("protected-write", "%s on %s may not write %q: its foreign key checks masked column %s.%s", verb, qualified(rel.Name), fk.Columns[i], qualified(ref.Name), rc)
			}
			if filtered {
				return refuse("protected-write", "%s on %s may not write %q: its foreign key checks %s, which a row filter applies to", verb, qualified(rel.Name), fk.Columns[i], qualified(ref.Name))
			}
		}
	}
	return nil
}

// constraintOracle refuses an UPDATE of rel (or an INSERT, with insert
// set) that writes cols when a constraint the write is checked against
// uses a masked column: a CHECK constraint mentioning a written and a
// masked column, or any masked column if it is NOT VALID (the updated row
// is checked whole), a unique or exclusion index whose key, key
// expressions or predicate use a written and a masked column. Whether the
// write succeeds (or fails with 23514, 23505 or 23P01) would tell
// something about the raw value. An INSERT stores a new row whose masked
// columns the session did not write: its CHECK constraints see no stored
// value. Partitions and inheritance children, whose rows a write to rel
// reaches, count too.
func (w *walker) constraintOracle(rel *catalog.Relation, cols []string, verb string, insert bool) error {
	masked := w.maskedColumns(rel)
	if len(masked) == 0 {
		return nil
	}
	assigned := map[string]bool{}
	for _, c := range cols {
		assigned[c] = true
	}
	rels := []*catalog.Relation{rel}
	for _, d := range w.s.Catalog.Descendants(rel.Name) {
		if dr := w.s.Catalog.Relation(d); dr != nil {
			rels = append(rels, dr)
		}
	}
	for _, r := range rels {
		for _, con := range r.Constraints {
			if con.Kind == 'c' && insert {
				continue
			}
			usesMasked, usesWritten := "", !con.Validated
			for _, c := range con.Columns {
				if masked[c] && usesMasked == "" {
					usesMasked = c
				}
				usesWritten = usesWritten || assigned[c]
			}
			if usesMasked == "" || !usesWritten {
				continue
			}
			what := "a unique index"
			switch con.Kind {
			case 'c':
				what = "a CHECK constraint"
			case 'x':
				what = "an exclusion constraint"
			}
			return refuse("protected-write", "%s on %s is not allowed: %s of %s uses masked column %q with the written columns", verb, qualified(rel.Name), what, qualified(r.Name), usesMasked)
		}
	}
	return nil
}

// rowFiltered reports whether a row filter of the session applies to rel
// or to any table whose rows it holds (its partitions and inheritance
// children): a foreign-key check on rel sees the rows the filter hides.
func (w *walker) rowFiltered(rel *catalog.Relation) bool {
	if len(w.s.Grants.RowFilters()) == 0 {
		return false
	}
	if len(w.rowFilters(rel)) > 0 {
		return true
	}
	for _, d := range w.s.Catalog.Descendants(rel.Name) {
		if dr := w.s.Catalog.Relation(d); dr != nil && len(w.rowFilters(dr)) > 0 {
			return true
		}
	}
	return false
}

// targetColumns returns the column names a list of ResTargets assigns
// (INSERT column lists, UPDATE SET), or all of rel's columns if the list
// is empty.
func targetColumns(rel *catalog.Relation, targets []*pg_query.Node) []string {
	var out []string
	if len(targets) == 0 {
		for _, c := range rel.Columns {
			out = append(out, c.Name)
		}
		return out
	}
	for _, t := range targets {
		if rt := t.GetResTarget(); rt != nil {
			out = append(out, rt.Name)
		}
	}
	return out
}

// maskedColumns returns the names of rel's columns masked for the session.
func (w *walker) maskedColumns(rel *catalog.Relation) map[string]bool {
	out := map[string]bool{}
	for _, c := range rel.Columns {
		if r := w.columnRule(rel, c.Name); r != nil && w.s.Grants.Treatment(r.Class.Name) == rules.TreatMask {
			out[c.Name] = true
		}
	}
	return out
}

// protectedWrite checks a write to a protected relation: the statement may
// not read a masked column of the target (in WHERE, SET sources, RETURNING
// or anywhere else), because the target is the raw table and its result
// (rows affected, values copied or returned) would reveal the value.
func (w *walker) protectedWrite(rel *catalog.Relation, alias string, verb string, refs map[string]bool) error {
	masked := w.maskedColumns(rel)
	if refs["*"] {
		return refuse("protected-write", "%s on %s may not use * (it would return or read masked columns raw)", verb, qualified(rel.Name))
	}
	for name := range refs {
		if masked[name] {
			return refuse("protected-write", "%s on %s may not read masked column %q", verb, qualified(rel.Name), name)
		}
		if name == rel.Name.Name || name == alias {
			return refuse("protected-write", "%s on %s may not use a whole-row reference to it", verb, qualified(rel.Name))
		}
	}
	if len(w.rowFilters(rel)) > 0 {
		return refuse("protected-write", "%s on %s is not allowed: a row filter applies to it", verb, qualified(rel.Name))
	}
	return nil
}

// collectRefs runs f and returns the column names it referenced; they also
// stay recorded for the statement's deny check.
func (w *walker) collectRefs(f func() error) (map[string]bool, error) {
	outer := w.refs
	w.refs = map[string]bool{}
	err := f()
	inner := w.refs
	for k := range inner {
		outer[k] = true
	}
	w.refs = outer
	return inner, err
}

func aliasOf(rv *pg_query.RangeVar) string {
	if rv.Alias != nil {
		return rv.Alias.Aliasname
	}
	return ""
}

func (w *walker) insertStmt(s *pg_query.InsertStmt) error {
	if s.WithClause != nil {
		if err := w.pushCTEs(s.WithClause); err != nil {
			return err
		}
		defer w.popCTEs()
	}
	rel, protected, err := w.target(s.Relation)
	if err != nil {
		return err
	}
	// Names used in the inserted rows come from other relations (masked
	// there); only ON CONFLICT and RETURNING read the target itself.
	if err := w.node(s.SelectStmt); err != nil {
		return err
	}
	refs, err := w.collectRefs(func() error {
		return w.fields(s.ProtoReflect(), map[protoreflect.Name]bool{"with_clause": true, "relation": true, "select_stmt": true})
	})
	if err != nil {
		return err
	}
	w.assignedTypes(rel, targetColumns(rel, s.Cols))
	if oc := s.OnConflictClause; oc != nil && len(oc.TargetList) > 0 {
		w.assignedTypes(rel, targetColumns(rel, oc.TargetList))
	}
	if err := w.foreignKeyOracle(rel, targetColumns(rel, s.Cols), "INSERT"); err != nil {
		return err
	}
	if protected {
		if s.OnConflictClause != nil {
			return refuse("protected-write", "INSERT ... ON CONFLICT on %s would reveal whether a protected value exists", qualified(rel.Name))
		}
		if err := w.assignsMasked(rel, targetColumns(rel, s.Cols), "INSERT"); err != nil {
			return err
		}
		if err := w.constraintOracle(rel, targetColumns(rel, s.Cols), "INSERT", true); err != nil {
			return err
		}
		return w.protectedWrite(rel, aliasOf(s.Relation), "INSERT", refs)
	}
	return nil
}

func (w *walker) updateStmt(s *pg_query.UpdateStmt) error {
	return w.modify(s, s.WithClause, s.Relation, s.FromClause, "from_clause", "UPDATE", s.TargetList)
}

func (w *walker) deleteStmt(s *pg_query.DeleteStmt) error {
	return w.modify(s, s.WithClause, s.Relation, s.UsingClause, "using_clause", "DELETE", nil)
}

// modify analyses an UPDATE or DELETE: its WITH clause, its target, the
// relations it joins (from, whose field is named fromField), and every
// other clause, whose column references must not read a masked column of a
// protected target.
func (w *walker) modify(stmt proto.Message, with *pg_query.WithClause, relation *pg_query.RangeVar, from []*pg_query.Node, fromField protoreflect.Name, verb string, set []*pg_query.Node) error {
	if with != nil {
		if err := w.pushCTEs(with); err != nil {
			return err
		}
		defer w.popCTEs()
	}
	rel, protected, err := w.target(relation)
	if err != nil {
		return err
	}
	refs, err := w.collectRefs(func() error {
		if err := w.fromList(from); err != nil {
			return err
		}
		return w.fields(stmt.ProtoReflect(), map[protoreflect.Name]bool{"with_clause": true, "relation": true, fromField: true})
	})
	if err != nil {
		return err
	}
	if len(set) > 0 {
		w.assignedTypes(rel, targetColumns(rel, set))
		if err := w.foreignKeyOracle(rel, targetColumns(rel, set), verb); err != nil {
			return err
		}
	}
	if verb == "DELETE" || len(set) > 0 {
		if err := w.referencedOracle(rel, targetColumns(rel, set), verb); err != nil {
			return err
		}
	}
	if protected {
		if len(set) > 0 {
			if err := w.assignsMasked(rel, targetColumns(rel, set), verb); err != nil {
				return err
			}
			if err := w.constraintOracle(rel, targetColumns(rel, set), verb, false); err != nil {
				return err
			}
		}
		return w.protectedWrite(rel, aliasOf(relation), verb, refs)
	}
	return nil
}

// copyStmt allows COPY TO STDOUT (of a query, or of a table rewritten into
// a masked query) and COPY FROM STDIN into unprotected tables.
func (w *walker) copyStmt(s *pg_query.CopyStmt) error {
	if s.IsProgram || s.Filename != "" {
		return refuse("copy", "COPY to or from a server file or program is not allowed for masked sessions")
	}
	for _, o := range s.Options {
		if err := w.node(o); err != nil {
			return err
		}
	}
	if s.Query != nil {
		return w.node(s.Query)
	}
	if s.IsFrom {
		rel, protected, err := w.target(s.Relation)
		if err != nil {
			return err
		}
		if protected {
			return refuse("protected-write", "COPY FROM into %s is not allowed for masked sessions", qualified(rel.Name))
		}
		var cols []string
		for _, a := range s.Attlist {
			if v := a.GetString_(); v != nil {
				cols = append(cols, v.Sval)
			}
		}
		if len(cols) == 0 {
			cols = targetColumns(rel, nil)
		}
		// COPY FROM reads values with the input functions, then checks
		// them against their domains.
		w.castToColumns(rel, cols)
		if err := w.foreignKeyOracle(rel, cols, "COPY FROM"); err != nil {
			return err
		}
		return w.node(s.WhereClause)
	}
	// COPY table TO STDOUT becomes COPY (SELECT cols FROM table) TO STDOUT,
	// so that the table goes through substitution like any other read.
	cols := "*"
	if len(s.Attlist) > 0 {
		var names []string
		for _, a := range s.Attlist {
			v := a.GetString_()
			if v == nil {
				return refuse("unsupported-syntax", "unexpected COPY column list")
			}
			names = append(names, quoteIdent(v.Sval))
		}
		cols = strings.Join(names, ", ")
	}
	rv := s.Relation
	name := quoteIdent(rv.Relname)
	if rv.Schemaname != "" {
		name = quoteIdent(rv.Schemaname) + "." + name
	}
	from := " FROM "
	if rel := w.resolve(rv); rel != nil && rel.Kind == catalog.KindTable {
		// COPY table TO copies the table's own rows, not those of its
		// inheritance children.
		from = " FROM ONLY "
	}
	tree, err := pg_query.Parse("SELECT " + cols + from + name)
	if err != nil || len(tree.Stmts) != 1 {
		return refuse("unsupported-syntax", "cannot rewrite COPY of %s", name)
	}
	q := tree.Stmts[0].Stmt
	if err := w.node(q); err != nil {
		return err
	}
	s.Query = q
	s.Relation = nil
	s.Attlist = nil
	return nil
}
