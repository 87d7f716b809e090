package rewrite

import (
	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// A template is Preparable when the proxy may run its texts as a prepared
// statement of the session (Parse once, then Bind/Describe/Execute with the
// constants as parameters) instead of sending each text: the server then
// parses and plans the masking sub-query once per session instead of once
// per text. That changes how the constants are typed — a parameter's type
// is inferred where a literal's is read — so it is allowed only when every
// constant stands where both resolve alike:
//
//   - an operand of a comparison (=, <>, !=, <, <=, >, >=, LIKE, ILIKE,
//     BETWEEN) or of IN (...) whose other side is a column;
//   - LIMIT or OFFSET;
//   - the argument of an explicit cast ('2024-01-01'::date).
//
// Numbers are bound with the type their literal has (int4, int8 or
// numeric), strings with an unspecified type, which the server resolves
// from the column exactly as it resolves an untyped literal.

// preparable reports whether every parameter $paramBase.. of the parsed
// client text stands in one of those positions.
func preparable(sql string, n int) bool {
	tree, err := pg_query.Parse(sql)
	if err != nil || len(tree.Stmts) != 1 {
		return false
	}
	safe := make([]int, n)
	total := 0
	var visit func(m protoreflect.Message)
	mark := func(x *pg_query.Node) {
		if p := x.GetParamRef(); p != nil {
			if k := int(p.Number) - paramBase; k >= 0 && k < n {
				safe[k]++
			}
		}
	}
	visit = func(m protoreflect.Message) {
		if m == nil || !m.IsValid() {
			return
		}
		switch x := m.Interface().(type) {
		case *pg_query.ParamRef:
			total++
		case *pg_query.A_Expr:
			if comparisonWithColumn(x) {
				mark(x.Lexpr)
				mark(x.Rexpr)
				if l := x.Rexpr.GetList(); l != nil {
					for _, it := range l.Items {
						mark(it)
					}
				}
			}
		case *pg_query.SelectStmt:
			mark(x.LimitCount)
			mark(x.LimitOffset)
		case *pg_query.TypeCast:
			mark(x.Arg)
		}
		forEachChild(m, visit)
	}
	visit(tree.Stmts[0].ProtoReflect())
	if total != n {
		return false
	}
	for _, c := range safe {
		if c != 1 {
			return false
		}
	}
	return true
}

// comparisonWithColumn reports whether e compares a column with
// parameters: one side a column reference, the other a parameter (or, for
// IN and BETWEEN, a list of them).
func comparisonWithColumn(e *pg_query.A_Expr) bool {
	switch e.Kind {
	case pg_query.A_Expr_Kind_AEXPR_OP:
		if len(e.Name) != 1 {
			return false
		}
		switch e.Name[0].GetString_().GetSval() {
		case "=", "<>", "!=", "<", "<=", ">", ">=":
		default:
			return false
		}
	case pg_query.A_Expr_Kind_AEXPR_IN, pg_query.A_Expr_Kind_AEXPR_LIKE, pg_query.A_Expr_Kind_AEXPR_ILIKE,
		pg_query.A_Expr_Kind_AEXPR_BETWEEN, pg_query.A_Expr_Kind_AEXPR_NOT_BETWEEN:
	default:
		return false
	}
	col := func(x *pg_query.Node) bool { return x.GetColumnRef() != nil }
	param := func(x *pg_query.Node) bool {
		if x.GetParamRef() != nil {
			return true
		}
		if l := x.GetList(); l != nil && len(l.Items) > 0 {
			for _, it := range l.Items {
				if it.GetParamRef() == nil {
					return false
				}
			}
			return true
		}
		return false
	}
	return col(e.Lexpr) && param(e.Rexpr) || col(e.Rexpr) && param(e.Lexpr) && e.Kind == pg_query.A_Expr_Kind_AEXPR_OP
}

// listParam reports whether a parameter of the parsed text stands anywhere
// in an ORDER BY, GROUP BY or DISTINCT ON list. A number there may be a
// positional reference to an output column even where Normalize takes it
// for a constant (ORDER BY (2), GROUP BY ROLLUP (1), GROUP BY ALL 1), and
// then texts of one shape use different columns: no template is built.
func listParam(sql string) bool {
	tree, err := pg_query.Parse(sql)
	if err != nil {
		return true
	}
	found := false
	var hasParam func(m protoreflect.Message)
	hasParam = func(m protoreflect.Message) {
		if found || m == nil || !m.IsValid() {
			return
		}
		if _, ok := m.Interface().(*pg_query.ParamRef); ok {
			found = true
			return
		}
		forEachChild(m, hasParam)
	}
	var visit func(m protoreflect.Message)
	visit = func(m protoreflect.Message) {
		if found || m == nil || !m.IsValid() {
			return
		}
		if s, ok := m.Interface().(*pg_query.SelectStmt); ok {
			for _, list := range [][]*pg_query.Node{s.SortClause, s.GroupClause, s.DistinctClause} {
				for _, n := range list {
					hasParam(n.ProtoReflect())
				}
			}
		}
		forEachChild(m, visit)
	}
	for _, st := range tree.Stmts {
		visit(st.ProtoReflect())
	}
	return found
}
