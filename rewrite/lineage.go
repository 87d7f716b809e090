package rewrite

import (
	"slices"
	"strconv"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/pgveil/pgveil/catalog"
	"github.com/pgveil/pgveil/rules"
)

// The lineage analysis resolves names like PostgreSQL's parse analysis
// (src/backend/parser/parse_relation.c and parse_target.c), in a
// simplified form: it never refuses anything, and where it cannot resolve
// a name exactly it attributes the reference to every candidate and
// drops the "direct" property. It reads the parse tree and never
// modifies it.

// dep is one base column a value is computed from, with the clause kinds
// already known to apply inside the value (ClauseAggregateArg for
// max(x)).
type dep struct {
	key  rules.ColumnKey
	rule *rules.ColumnRule
	bits ClauseSet
}

// lin is the lineage of a value.
type lin struct {
	deps []dep
	// direct is set when the value is deps[0]'s column, unchanged.
	direct bool
}

// add merges o into l with extra clause bits; the result is not direct.
func (l *lin) add(o lin, bits ClauseSet) {
	l.direct = false
	for _, d := range o.deps {
		d.bits |= bits
		l.addDep(d)
	}
}

func (l *lin) addDep(d dep) {
	for i := range l.deps {
		if l.deps[i].key == d.key {
			l.deps[i].bits |= d.bits
			return
		}
	}
	l.deps = append(l.deps, d)
}

// colState is a column of a sub-query, CTE or function in FROM: its
// lineage, and whether any outer query read it. Unread ones are recorded
// as ClauseOther when the statement ends.
type colState struct {
	l    lin
	used bool
}

// rcol is a named column of a range-table entry.
type rcol struct {
	name string
	st   *colState
}

// rte is something a qualified name can refer to: a relation, sub-query,
// CTE, function or aliased join in FROM.
type rte struct {
	name string
	// schema is set for a relation without an alias, which
	// schema.name.column can also refer to.
	schema string
	cols   []rcol
	// known is false when the column list may be incomplete (a function
	// in FROM, a relation the catalog does not know); fallback is then the
	// lineage of a column not listed.
	known    bool
	fallback *colState
}

// item is one FROM-list item: the names it makes visible and its
// columns for unqualified references and *, in * order.
type item struct {
	rtes     []*rte
	cols     []rcol
	known    bool
	fallback *colState
}

// scope is one query level.
type scope struct {
	parent *scope
	items  []*item
}

// qres is the result columns of a query.
type qres struct {
	cols  []rcol
	known bool
}

// cteDef is a common table expression in scope.
type cteDef struct {
	cols  []rcol
	known bool
}

// analyzer computes the usage facts and output lineage of one statement.
type analyzer struct {
	s       *Session
	path    catalog.SearchPath
	uses    map[rules.ColumnKey]*ColumnUse
	pending []*colState
	ctes    []map[string]*cteDef
	relCols map[uint32][]rcol
	// enc collects the write-path encryption facts; nil when the
	// policy has no encrypted column or the caller does not ask.
	enc *encState
}

func newAnalyzer(s *Session) *analyzer {
	return &analyzer{s: s, path: catalog.SearchPath{Schemas: s.SearchPath, User: s.User}, uses: map[rules.ColumnKey]*ColumnUse{}, relCols: map[uint32][]rcol{}}
}

// record attributes the columns of l to the statement with clause.
func (a *analyzer) record(l lin, clause ClauseSet) {
	for _, d := range l.deps {
		u := a.uses[d.key]
		if u == nil {
			u = &ColumnUse{Column: d.key, Rule: d.rule, Treatment: a.s.Grants.ColumnTreatment(d.rule)}
			a.uses[d.key] = u
		}
		u.Clauses |= clause | d.bits
	}
}

// newCol returns a pending column with lineage l.
func (a *analyzer) newCol(name string, l lin) rcol {
	st := &colState{l: l}
	a.pending = append(a.pending, st)
	return rcol{name: name, st: st}
}

// consume marks cols read and returns their merged lineage.
func consume(cols []rcol) lin {
	var l lin
	for _, c := range cols {
		c.st.used = true
		l.add(c.st.l, 0)
	}
	return l
}

// use marks c read and returns its lineage.
func use(c rcol) lin {
	c.st.used = true
	return c.st.l
}

// finish records unread pending columns and returns the uses, sorted.
func (a *analyzer) finish() []ColumnUse {
	for i := 0; i < len(a.pending); i++ {
		if st := a.pending[i]; !st.used {
			a.record(st.l, ClauseOther)
		}
	}
	if len(a.uses) == 0 {
		return nil
	}
	out := make([]ColumnUse, 0, len(a.uses))
	for _, u := range a.uses {
		out = append(out, *u)
	}
	slices.SortFunc(out, func(x, y ColumnUse) int {
		if c := strings.Compare(x.Column.Schema, y.Column.Schema); c != 0 {
			return c
		}
		if c := strings.Compare(x.Column.Table, y.Column.Table); c != 0 {
			return c
		}
		return strings.Compare(x.Column.Column, y.Column.Column)
	})
	return out
}

// outputs turns top-level result columns into Outputs and records them
// as ClauseOutput.
func (a *analyzer) outputs(res qres) []Output {
	out := make([]Output, len(res.cols))
	for i, c := range res.cols {
		l := use(c)
		a.record(l, ClauseOutput)
		if l.direct && len(l.deps) == 1 {
			d := l.deps[0]
			key := d.key
			out[i] = Output{Source: &key, Rule: d.rule, Transform: transformFor(a.s.Grants, d.rule)}
			if rel := a.s.Catalog.Relation(catalog.Name{Schema: key.Schema, Name: key.Table}); rel != nil {
				if c := rel.Column(key.Column); c != nil {
					out[i].Type = c.Type
				}
			}
		}
	}
	return out
}

// relationColumns returns the columns of rel with their lineage, in
// order. They are shared by every reference to rel in the statement.
func (a *analyzer) relationColumns(rel *catalog.Relation) []rcol {
	if cols, ok := a.relCols[rel.OID]; ok {
		return cols
	}
	cols := make([]rcol, len(rel.Columns))
	states := make([]colState, len(rel.Columns))
	view := rel.Kind == catalog.KindView || rel.Kind == catalog.KindMatView
	var anc, desc []catalog.Name
	if !view {
		anc, desc = a.s.Catalog.Ancestors(rel), a.s.Catalog.Descendants(rel.Name)
	}
	for i, c := range rel.Columns {
		if view {
			states[i].l = a.viewColumn(rel, c.Name)
		} else {
			states[i].l = a.tableColumn(rel, anc, desc, c.Name)
		}
		states[i].used = true
		cols[i] = rcol{name: c.Name, st: &states[i]}
	}
	a.relCols[rel.OID] = cols
	return cols
}

// baseColumn is the lineage of column col of table rel.
func (a *analyzer) baseColumn(rel *catalog.Relation, col string) lin {
	return a.tableColumn(rel, a.s.Catalog.Ancestors(rel), a.s.Catalog.Descendants(rel.Name), col)
}

// tableColumn is the lineage of column col of table rel, whose ancestors
// and descendants are given: the column as the policy names it (the
// classified ancestor for partitions and inheritance children, the
// partition root for unclassified columns). The rule is ColumnRule's.
func (a *analyzer) tableColumn(rel *catalog.Relation, anc, desc []catalog.Name, col string) lin {
	p := a.s.Policy
	key := rules.ColumnKey{Schema: rel.Name.Schema, Table: rel.Name.Name, Column: col}
	rule := p.Column(key)
	for i := 0; rule == nil && i < len(anc); i++ {
		k := rules.ColumnKey{Schema: anc[i].Schema, Table: anc[i].Name, Column: col}
		if rule = p.Column(k); rule != nil {
			key = k
		}
	}
	if rule == nil {
		// The strictest rule on a descendant governs reading a parent
		// (ColumnRule); the column keeps the parent's name.
		for _, d := range desc {
			if r := p.Column(rules.ColumnKey{Schema: d.Schema, Table: d.Name, Column: col}); r != nil &&
				(rule == nil || a.s.Grants.Treatment(r.Class.Name) < a.s.Grants.Treatment(rule.Class.Name)) {
				rule = r
			}
		}
		root := rel
		for !root.Parent.IsZero() {
			pr := a.s.Catalog.Relation(root.Parent)
			if pr == nil {
				break
			}
			root = pr
		}
		key.Schema, key.Table = root.Name.Schema, root.Name.Name
	}
	return lin{deps: []dep{{key: key, rule: rule}}, direct: true}
}

// viewColumn is the lineage of column col of view rel, following how the
// rewrite treats views: a view some of whose columns the policy
// classifies is masked by its own columns, so each of its columns is a
// base column itself (classified or not). For a view the policy does not
// classify, the catalog does not say which column of which relation a
// view column comes from: it is attributed to every column of the same
// name, and to every classified column, of the tables the view reads,
// and is not direct.
func (a *analyzer) viewColumn(rel *catalog.Relation, col string) lin {
	key := rules.ColumnKey{Schema: rel.Name.Schema, Table: rel.Name.Name, Column: col}
	classified := false
	for _, c := range rel.Columns {
		if a.s.Policy.Column(rules.ColumnKey{Schema: rel.Name.Schema, Table: rel.Name.Name, Column: c.Name}) != nil {
			classified = true
			break
		}
	}
	if classified {
		return lin{deps: []dep{{key: key, rule: a.s.Policy.Column(key)}}, direct: true}
	}
	var l lin
	for _, n := range rel.Reads {
		rr := a.s.Catalog.Relation(n)
		if rr == nil || rr.Kind == catalog.KindView || rr.Kind == catalog.KindMatView {
			continue
		}
		for _, c := range rr.Columns {
			if c.Name == col || ColumnRule(a.s.Policy, a.s.Catalog, a.s.Grants, rr, c.Name) != nil {
				l.add(a.baseColumn(rr, c.Name), 0)
			}
		}
	}
	if len(l.deps) == 0 {
		// A view over nothing the catalog knows: the column stands for
		// itself.
		l.deps = []dep{{key: key}}
	}
	l.direct = false
	return l
}

// ---- CTEs ----

func (a *analyzer) cte(name string) *cteDef {
	for i := len(a.ctes) - 1; i >= 0; i-- {
		if d, ok := a.ctes[i][name]; ok {
			return d
		}
	}
	return nil
}

// pushCTEs analyses a WITH clause and brings its names into scope; the
// caller pops them.
func (a *analyzer) pushCTEs(wc *pg_query.WithClause, parent *scope) {
	defs := map[string]*cteDef{}
	a.ctes = append(a.ctes, defs)
	for _, c := range wc.Ctes {
		cte := c.GetCommonTableExpr()
		if cte == nil {
			a.generic(c, parent, ClauseOther)
			continue
		}
		var res qres
		if sel := cte.Ctequery.GetSelectStmt(); wc.Recursive && sel != nil && sel.Op != pg_query.SetOperation_SETOP_NONE && sel.Larg != nil {
			// WITH RECURSIVE: the non-recursive term gives the first
			// lineage; the recursive term reads it, which can widen it:
			// iterate a few times (lineage only grows).
			def := &cteDef{}
			defs[cte.Ctename] = def
			res = a.selectQuery(sel.Larg, parent)
			for i := 0; i < 3; i++ {
				def.cols, def.known = renamed(res.cols, cte.Aliascolnames), res.known
				// The previous pass's columns are superseded, not unread.
				for _, c := range res.cols {
					c.st.used = true
				}
				res = a.selectQuery(sel, parent)
			}
		} else {
			if wc.Recursive {
				defs[cte.Ctename] = &cteDef{known: false}
			}
			res = a.query(cte.Ctequery, parent)
		}
		defs[cte.Ctename] = &cteDef{cols: renamed(res.cols, cte.Aliascolnames), known: res.known}
	}
}

func (a *analyzer) popCTEs() { a.ctes = a.ctes[:len(a.ctes)-1] }

// renamed applies a column alias list (which may name fewer columns).
func renamed(cols []rcol, names []*pg_query.Node) []rcol {
	if len(names) == 0 {
		return cols
	}
	out := slices.Clone(cols)
	for i, n := range names {
		if i < len(out) {
			out[i].name = n.GetString_().GetSval()
		}
	}
	return out
}

// ---- queries ----

// query analyses a statement used as a query (a sub-query, a CTE, the
// query of DECLARE, COPY, PREPARE) and returns its result columns.
func (a *analyzer) query(n *pg_query.Node, parent *scope) qres {
	switch x := n.GetNode().(type) {
	case *pg_query.Node_SelectStmt:
		return a.selectQuery(x.SelectStmt, parent)
	case *pg_query.Node_InsertStmt:
		return a.insertStmt(x.InsertStmt, parent)
	case *pg_query.Node_UpdateStmt:
		return a.updateStmt(x.UpdateStmt, parent)
	case *pg_query.Node_DeleteStmt:
		return a.deleteStmt(x.DeleteStmt, parent)
	case *pg_query.Node_MergeStmt:
		return a.mergeStmt(x.MergeStmt, parent)
	}
	a.generic(n, parent, ClauseOther)
	return qres{}
}

func (a *analyzer) selectQuery(s *pg_query.SelectStmt, parent *scope) qres {
	if s == nil {
		return qres{known: true}
	}
	if s.WithClause != nil {
		a.pushCTEs(s.WithClause, parent)
		defer a.popCTEs()
	}
	if s.Op != pg_query.SetOperation_SETOP_NONE {
		l := a.selectQuery(s.Larg, parent)
		r := a.selectQuery(s.Rarg, parent)
		res := qres{known: l.known && r.known && len(l.cols) == len(r.cols)}
		for i, c := range l.cols {
			cl := use(c)
			if i >= len(r.cols) {
				res.cols = append(res.cols, a.newCol(c.name, lin{deps: cl.deps}))
				continue
			}
			rl := use(r.cols[i])
			var m lin
			m.add(cl, 0)
			m.add(rl, 0)
			m.direct = cl.direct && rl.direct && len(m.deps) == 1
			res.cols = append(res.cols, a.newCol(c.name, m))
		}
		a.sortAndLimit(s, res, &scope{parent: parent})
		return res
	}
	if len(s.ValuesLists) > 0 {
		res := qres{known: true}
		for r, row := range s.ValuesLists {
			items := row.GetList().GetItems()
			for i, e := range items {
				l := a.expr(e, parent)
				if r == 0 {
					res.cols = append(res.cols, a.newCol("column"+strconv.Itoa(i+1), l))
					continue
				}
				if i < len(res.cols) {
					st := res.cols[i].st
					direct := st.l.direct && l.direct && len(l.deps) == 1 && len(st.l.deps) == 1 && l.deps[0].key == st.l.deps[0].key
					st.l.add(l, 0)
					st.l.direct = direct
				}
			}
		}
		a.sortAndLimit(s, res, &scope{parent: parent})
		return res
	}
	sc := &scope{parent: parent}
	a.fromList(s.FromClause, sc)
	a.record(a.expr(s.WhereClause, sc), ClauseFilter)
	res := a.targets(s.TargetList, sc)
	for _, g := range s.GroupClause {
		a.groupItem(g, sc, res)
	}
	a.record(a.expr(s.HavingClause, sc), ClauseFilter)
	for _, wd := range s.WindowClause {
		if w := wd.GetWindowDef(); w != nil {
			a.windowDef(w, sc)
		}
	}
	if len(s.DistinctClause) > 0 {
		if s.DistinctClause[0].GetNode() == nil {
			for _, c := range res.cols {
				a.record(c.st.l, ClauseGroupOrder)
			}
		} else {
			for _, d := range s.DistinctClause {
				a.record(a.sortKey(d, sc, res, true), ClauseGroupOrder)
			}
		}
	}
	a.sortAndLimit(s, res, sc)
	if s.IntoClause != nil {
		// SELECT INTO stores the rows in a new table.
		a.record(consume(res.cols), ClauseWriteSource)
		return qres{known: true}
	}
	return res
}

// sortAndLimit records ORDER BY, LIMIT and OFFSET.
func (a *analyzer) sortAndLimit(s *pg_query.SelectStmt, res qres, sc *scope) {
	for _, o := range s.SortClause {
		if sb := o.GetSortBy(); sb != nil {
			l := a.sortKey(sb.Node, sc, res, true)
			a.checkOrder(l)
			a.record(l, ClauseGroupOrder)
		} else {
			a.generic(o, sc, ClauseGroupOrder)
		}
	}
	a.record(a.expr(s.LimitOffset, sc), ClauseOther)
	a.record(a.expr(s.LimitCount, sc), ClauseOther)
}

// groupItem records one GROUP BY item.
func (a *analyzer) groupItem(g *pg_query.Node, sc *scope, res qres) {
	switch x := g.GetNode().(type) {
	case *pg_query.Node_GroupingSet:
		for _, c := range x.GroupingSet.Content {
			a.groupItem(c, sc, res)
		}
	case *pg_query.Node_List:
		for _, c := range x.List.Items {
			a.groupItem(c, sc, res)
		}
	default:
		// GROUP BY prefers an input column to an output name.
		a.record(a.sortKey(g, sc, res, false), ClauseGroupOrder)
	}
}

// sortKey returns the lineage of an ORDER BY, DISTINCT ON or GROUP BY
// item: a position (ORDER BY 2), an output column name, or an expression
// over the input. outputFirst is ORDER BY's rule (an output name wins);
// GROUP BY's is the reverse (PostgreSQL documentation, SELECT, "GROUP BY
// Clause").
func (a *analyzer) sortKey(n *pg_query.Node, sc *scope, res qres, outputFirst bool) lin {
	if c := n.GetAConst(); c != nil {
		if iv, ok := c.Val.(*pg_query.A_Const_Ival); ok {
			if i := int(iv.Ival.Ival); i >= 1 && i <= len(res.cols) {
				return use(res.cols[i-1])
			}
		}
		return lin{}
	}
	if cr := n.GetColumnRef(); cr != nil && len(cr.Fields) == 1 {
		if name := cr.Fields[0].GetString_(); name != nil {
			var byName []rcol
			for _, c := range res.cols {
				if c.name == name.Sval {
					byName = append(byName, c)
				}
			}
			if len(byName) > 0 && (outputFirst || !a.levelHas(sc, name.Sval)) {
				l := consume(byName)
				if len(byName) == 1 {
					l = use(byName[0])
				}
				return l
			}
		}
	}
	return a.expr(n, sc)
}

// levelHas reports whether an input column of sc's own level is called
// name.
func (a *analyzer) levelHas(sc *scope, name string) bool {
	for _, it := range sc.items {
		for _, c := range it.cols {
			if c.name == name {
				return true
			}
		}
	}
	return false
}

// targets analyses a target list (or RETURNING list).
func (a *analyzer) targets(list []*pg_query.Node, sc *scope) qres {
	res := qres{known: true}
	for _, t := range list {
		rt := t.GetResTarget()
		if rt == nil {
			a.generic(t, sc, ClauseOther)
			res.known = false
			continue
		}
		if cr := rt.Val.GetColumnRef(); cr != nil && isStar(cr) {
			cols, known := a.star(cr, sc)
			res.known = res.known && known
			for _, c := range cols {
				res.cols = append(res.cols, a.newCol(c.name, use(c)))
			}
			continue
		}
		l := a.expr(rt.Val, sc)
		name := rt.Name
		if name == "" {
			name = figureColname(rt.Val)
		}
		res.cols = append(res.cols, a.newCol(name, l))
	}
	return res
}

func isStar(cr *pg_query.ColumnRef) bool {
	return len(cr.Fields) > 0 && cr.Fields[len(cr.Fields)-1].GetAStar() != nil
}

// figureColname returns the name PostgreSQL gives an unnamed result
// column (FigureColname in src/backend/parser/parse_target.c).
func figureColname(n *pg_query.Node) string {
	switch x := n.GetNode().(type) {
	case *pg_query.Node_ColumnRef:
		f := x.ColumnRef.Fields
		for i := len(f) - 1; i >= 0; i-- {
			if s := f[i].GetString_(); s != nil {
				return s.Sval
			}
		}
	case *pg_query.Node_AIndirection:
		ind := x.AIndirection.Indirection
		for i := len(ind) - 1; i >= 0; i-- {
			if s := ind[i].GetString_(); s != nil {
				return s.Sval
			}
		}
		return figureColname(x.AIndirection.Arg)
	case *pg_query.Node_FuncCall:
		if f := x.FuncCall.Funcname; len(f) > 0 {
			return f[len(f)-1].GetString_().GetSval()
		}
	case *pg_query.Node_AArrayExpr:
		return "array"
	case *pg_query.Node_TypeCast:
		if name := figureColname(x.TypeCast.Arg); name != "?column?" {
			return name
		}
		if tn := x.TypeCast.TypeName; tn != nil && len(tn.Names) > 0 {
			return tn.Names[len(tn.Names)-1].GetString_().GetSval()
		}
	case *pg_query.Node_CollateClause:
		return figureColname(x.CollateClause.Arg)
	case *pg_query.Node_SubLink:
		switch x.SubLink.SubLinkType {
		case pg_query.SubLinkType_EXISTS_SUBLINK:
			return "exists"
		case pg_query.SubLinkType_ARRAY_SUBLINK:
			return "array"
		case pg_query.SubLinkType_EXPR_SUBLINK:
			if sel := x.SubLink.Subselect.GetSelectStmt(); sel != nil && len(sel.TargetList) == 1 {
				if rt := sel.TargetList[0].GetResTarget(); rt != nil {
					if rt.Name != "" {
						return rt.Name
					}
					return figureColname(rt.Val)
				}
			}
		}
	case *pg_query.Node_CaseExpr:
		if name := figureColname(x.CaseExpr.Defresult); name != "?column?" {
			return name
		}
		return "case"
	case *pg_query.Node_RowExpr:
		return "row"
	case *pg_query.Node_CoalesceExpr:
		return "coalesce"
	case *pg_query.Node_MinMaxExpr:
		if x.MinMaxExpr.Op == pg_query.MinMaxOp_IS_GREATEST {
			return "greatest"
		}
		return "least"
	case *pg_query.Node_NullIfExpr:
		return "nullif"
	case *pg_query.Node_SqlvalueFunction:
		return sqlValueFunctionName(x.SqlvalueFunction.Op)
	case *pg_query.Node_XmlExpr:
		return strings.TrimPrefix(strings.ToLower(x.XmlExpr.Op.String()), "is_")
	case *pg_query.Node_XmlSerialize:
		return "xmlserialize"
	case *pg_query.Node_GroupingFunc:
		return "grouping"
	}
	return "?column?"
}

func sqlValueFunctionName(op pg_query.SQLValueFunctionOp) string {
	s := strings.ToLower(strings.TrimPrefix(op.String(), "SVFOP_"))
	return strings.TrimSuffix(s, "_n")
}

// ---- FROM ----

func (a *analyzer) fromList(list []*pg_query.Node, sc *scope) {
	for _, n := range list {
		sc.items = append(sc.items, a.fromItem(n, sc))
	}
}

// fromItem analyses one FROM item; sc holds the items before it (for
// LATERAL) and the enclosing levels.
func (a *analyzer) fromItem(n *pg_query.Node, sc *scope) *item {
	switch x := n.GetNode().(type) {
	case *pg_query.Node_RangeVar:
		return a.rangeVar(x.RangeVar)
	case *pg_query.Node_JoinExpr:
		return a.join(x.JoinExpr, sc)
	case *pg_query.Node_RangeSubselect:
		rs := x.RangeSubselect
		parent := sc.parent
		if rs.Lateral {
			parent = sc
		}
		res := a.query(rs.Subquery, parent)
		r := &rte{known: res.known}
		if rs.Alias != nil {
			r.name = rs.Alias.Aliasname
			r.cols = renamed(res.cols, rs.Alias.Colnames)
		} else {
			r.cols = res.cols
		}
		return single(r)
	case *pg_query.Node_RangeFunction:
		rf := x.RangeFunction
		var l lin
		name := ""
		for _, f := range rf.Functions {
			items := f.GetList().GetItems()
			if len(items) > 0 {
				l.add(a.expr(items[0], sc), 0)
				if fc := items[0].GetFuncCall(); fc != nil && name == "" && len(fc.Funcname) > 0 {
					name = fc.Funcname[len(fc.Funcname)-1].GetString_().GetSval()
				}
			}
		}
		r := &rte{name: name}
		r.fallback = &colState{l: l}
		a.pending = append(a.pending, r.fallback)
		var names []string
		for _, c := range rf.Coldeflist {
			if cd := c.GetColumnDef(); cd != nil {
				names = append(names, cd.Colname)
			}
		}
		// With a column definition list the columns are exactly those.
		r.known = len(names) > 0 && len(rf.Functions) == 1 && !rf.Ordinality
		if rf.Alias != nil {
			r.name = rf.Alias.Aliasname
			for i, c := range rf.Alias.Colnames {
				if i < len(names) {
					names[i] = c.GetString_().GetSval()
				} else if !r.known {
					names = append(names, c.GetString_().GetSval())
				}
			}
		}
		for _, nm := range names {
			r.cols = append(r.cols, rcol{name: nm, st: r.fallback})
		}
		return single(r)
	case *pg_query.Node_RangeTableSample:
		it := a.fromItem(x.RangeTableSample.Relation, sc)
		for _, arg := range x.RangeTableSample.Args {
			a.record(a.expr(arg, sc), ClauseOther)
		}
		a.record(a.expr(x.RangeTableSample.Repeatable, sc), ClauseOther)
		return it
	}
	// XMLTABLE, JSON_TABLE and anything newer: their expressions may
	// read earlier items; the columns are not known.
	var l lin
	a.walk(innerMessage(n), sc, &l)
	r := &rte{fallback: &colState{l: l}}
	a.pending = append(a.pending, r.fallback)
	if m := innerMessage(n); m != nil {
		if fd := m.Descriptor().Fields().ByName("alias"); fd != nil && m.Has(fd) {
			if al, ok := m.Get(fd).Message().Interface().(*pg_query.Alias); ok {
				r.name = al.Aliasname
			}
		}
	}
	return single(r)
}

func single(r *rte) *item {
	return &item{rtes: []*rte{r}, cols: r.cols, known: r.known, fallback: r.fallback}
}

// rangeVar makes the item of a relation or CTE reference.
func (a *analyzer) rangeVar(rv *pg_query.RangeVar) *item {
	r := &rte{name: rv.Relname, known: true}
	if rv.Schemaname == "" {
		if def := a.cte(rv.Relname); def != nil {
			r.cols, r.known = def.cols, def.known
			if !r.known {
				r.fallback = &colState{used: true}
			}
			return a.aliased(r, rv.Alias)
		}
	}
	var rel *catalog.Relation
	if rv.Catalogname == "" {
		rel = a.resolve(rv)
	}
	if rel == nil {
		r.known = false
		r.fallback = &colState{used: true}
		if rv.Alias == nil {
			r.schema = rv.Schemaname
		}
		return a.aliased(r, rv.Alias)
	}
	if rv.Alias == nil {
		r.schema = rel.Name.Schema
	}
	r.cols = a.relationColumns(rel)
	return a.aliased(r, rv.Alias)
}

func (a *analyzer) resolve(rv *pg_query.RangeVar) *catalog.Relation {
	if rv.Schemaname != "" {
		return a.s.Catalog.ResolveQualified(a.path, rv.Schemaname, rv.Relname)
	}
	return a.s.Catalog.Resolve(a.path, rv.Relname)
}

// aliased applies a FROM alias and its column list to r.
func (a *analyzer) aliased(r *rte, al *pg_query.Alias) *item {
	if al != nil {
		r.name = al.Aliasname
		r.cols = renamed(r.cols, al.Colnames)
		if !r.known && len(al.Colnames) > len(r.cols) {
			for _, c := range al.Colnames[len(r.cols):] {
				r.cols = append(r.cols, rcol{name: c.GetString_().GetSval(), st: r.fallback})
			}
		}
	}
	return single(r)
}

// join analyses a JoinExpr: its inputs, its condition, and the merged
// columns of USING and NATURAL (PostgreSQL documentation, "Joined
// Tables": the merged column comes first, then the other columns of the
// left input, then those of the right).
func (a *analyzer) join(j *pg_query.JoinExpr, sc *scope) *item {
	left := a.fromItem(j.Larg, sc)
	withLeft := &scope{parent: sc.parent, items: append(slices.Clip(sc.items), left)}
	right := a.fromItem(j.Rarg, withLeft)
	own := &scope{parent: sc.parent, items: []*item{left, right}}
	var using []string
	for _, u := range j.UsingClause {
		using = append(using, u.GetString_().GetSval())
	}
	if j.IsNatural {
		for _, lc := range left.cols {
			for _, rc := range right.cols {
				if lc.name == rc.name && !slices.Contains(using, lc.name) {
					using = append(using, lc.name)
				}
			}
		}
	}
	it := &item{known: left.known && right.known}
	if left.fallback != nil || right.fallback != nil {
		fb := &colState{used: true}
		for _, f := range []*colState{left.fallback, right.fallback} {
			if f != nil {
				fb.l.add(f.l, 0)
			}
		}
		it.fallback = fb
	}
	merged := map[string]bool{}
	for _, name := range using {
		lc, lok := findCol(left.cols, name)
		rc, rok := findCol(right.cols, name)
		var m lin
		if lok {
			m.add(use(lc), 0)
		}
		if rok {
			m.add(use(rc), 0)
		}
		a.record(m, ClauseJoin)
		// The merged column is the left input's for INNER and LEFT
		// joins, the right input's for RIGHT joins and COALESCE(l, r)
		// for FULL joins (transformFromClauseItem in parse_clause.c).
		switch {
		case lok && (j.Jointype == pg_query.JoinType_JOIN_INNER || j.Jointype == pg_query.JoinType_JOIN_LEFT):
			m.direct = lc.st.l.direct
		case rok && j.Jointype == pg_query.JoinType_JOIN_RIGHT:
			m.direct = rc.st.l.direct
		}
		if m.direct {
			src := lc
			if j.Jointype == pg_query.JoinType_JOIN_RIGHT {
				src = rc
			}
			// Direct lineage is the source column's; the other side is
			// still attributed, through the join clause above.
			m = lin{deps: src.st.l.deps, direct: true}
		}
		merged[name] = true
		it.cols = append(it.cols, rcol{name: name, st: &colState{l: m, used: true}})
	}
	for _, side := range []*item{left, right} {
		for _, c := range side.cols {
			if !merged[c.name] {
				it.cols = append(it.cols, c)
			}
		}
	}
	a.record(a.expr(j.Quals, own), ClauseJoin)
	if j.Alias != nil {
		r := &rte{name: j.Alias.Aliasname, cols: renamed(it.cols, j.Alias.Colnames), known: it.known, fallback: it.fallback}
		it.rtes = []*rte{r}
		it.cols = r.cols
		return it
	}
	it.rtes = append(slices.Clip(left.rtes), right.rtes...)
	return it
}

func findCol(cols []rcol, name string) (rcol, bool) {
	for _, c := range cols {
		if c.name == name {
			return c, true
		}
	}
	return rcol{}, false
}

// ---- names ----

// star expands *, t.* or s.t.* in a target list.
func (a *analyzer) star(cr *pg_query.ColumnRef, sc *scope) ([]rcol, bool) {
	parts := refParts(cr)
	if len(parts) == 0 {
		var cols []rcol
		known := true
		for _, it := range sc.items {
			cols = append(cols, it.cols...)
			known = known && it.known
		}
		return cols, known
	}
	if r := a.findRTE(parts, sc); r != nil {
		return r.cols, r.known
	}
	return nil, false
}

// refParts returns the names of a column reference (without a final *).
func refParts(cr *pg_query.ColumnRef) []string {
	var parts []string
	for _, f := range cr.Fields {
		if s := f.GetString_(); s != nil {
			parts = append(parts, s.Sval)
		}
	}
	return parts
}

// findRTE finds the range-table entry a qualifier names (t, s.t or
// d.s.t), innermost level first.
func (a *analyzer) findRTE(q []string, sc *scope) *rte {
	if len(q) > 3 || len(q) == 0 {
		return nil
	}
	name := q[len(q)-1]
	schema := ""
	if len(q) >= 2 {
		schema = q[len(q)-2]
	}
	for l := sc; l != nil; l = l.parent {
		for _, it := range l.items {
			for _, r := range it.rtes {
				if r.name == name && (schema == "" || r.schema == schema) {
					return r
				}
			}
		}
	}
	return nil
}

// columnRef returns the lineage of a column reference.
func (a *analyzer) columnRef(cr *pg_query.ColumnRef, sc *scope) lin {
	parts := refParts(cr)
	if isStar(cr) {
		// t.* or * outside a target list is a whole-row value.
		cols, _ := a.star(cr, sc)
		l := consume(cols)
		if r := a.findRTE(parts, sc); r != nil && r.fallback != nil {
			r.fallback.used = true
			l.add(r.fallback.l, 0)
		}
		return l
	}
	if len(parts) == 0 {
		return lin{}
	}
	if len(parts) == 1 {
		if l, ok := a.unqualified(parts[0], sc); ok {
			return l
		}
		if r := a.findRTE(parts, sc); r != nil {
			return a.wholeRow(r)
		}
		return a.candidates(parts[0], sc)
	}
	// q.c where q names a range-table entry (t.c, s.t.c, d.s.t.c), else
	// a field of a composite column (c.f, t.c.f).
	for n := min(len(parts)-1, 3); n >= 1; n-- {
		r := a.findRTE(parts[:n], sc)
		if r == nil {
			continue
		}
		col := parts[n]
		if c, ok := findCol(r.cols, col); ok {
			l := use(c)
			if n+1 < len(parts) {
				l = lin{deps: l.deps}
			}
			return l
		}
		if !r.known && r.fallback != nil {
			r.fallback.used = true
			return lin{deps: r.fallback.l.deps}
		}
		// t.f with no column f is f(t), a function of the whole row.
		return a.wholeRow(r)
	}
	if l, ok := a.unqualified(parts[0], sc); ok {
		return lin{deps: l.deps}
	}
	return a.candidates(parts[len(parts)-1], sc)
}

// wholeRow is the lineage of a whole-row reference: every column.
func (a *analyzer) wholeRow(r *rte) lin {
	l := consume(r.cols)
	if r.fallback != nil {
		r.fallback.used = true
		l.add(r.fallback.l, 0)
	}
	l.direct = false
	return l
}

// unqualified resolves a column name level by level.
func (a *analyzer) unqualified(name string, sc *scope) (lin, bool) {
	for l := sc; l != nil; l = l.parent {
		var found []rcol
		var unknown []*colState
		for _, it := range l.items {
			for _, c := range it.cols {
				if c.name == name {
					found = append(found, c)
				}
			}
			if !it.known && it.fallback != nil {
				unknown = append(unknown, it.fallback)
			}
		}
		switch {
		case len(found) == 1:
			return use(found[0]), true
		case len(found) > 0:
			return lin{deps: consume(found).deps}, true
		}
		if len(unknown) > 0 {
			// The name may be a column of an item whose columns are not
			// known: it is that (attributed to its inputs) or an outer
			// column, never surely direct.
			var fl lin
			for _, f := range unknown {
				f.used = true
				fl.add(f.l, 0)
			}
			if ol, ok := a.unqualified(name, l.parent); ok {
				fl.add(ol, 0)
			}
			return lin{deps: fl.deps}, true
		}
	}
	return lin{}, false
}

// candidates attributes a reference the analysis cannot resolve to every
// visible column of that name.
func (a *analyzer) candidates(name string, sc *scope) lin {
	var l lin
	for lv := sc; lv != nil; lv = lv.parent {
		for _, it := range lv.items {
			for _, r := range it.rtes {
				for _, c := range r.cols {
					if c.name == name {
						l.add(use(c), 0)
					}
				}
			}
		}
	}
	l.direct = false
	return l
}

// ---- expressions ----

// expr returns the lineage of an expression. Parts whose clause kind is
// fixed whatever the expression's use (a window's ORDER BY, an
// aggregate's FILTER) are recorded at once.
func (a *analyzer) expr(n *pg_query.Node, sc *scope) lin {
	if n == nil || n.Node == nil {
		return lin{}
	}
	switch x := n.Node.(type) {
	case *pg_query.Node_ColumnRef:
		return a.columnRef(x.ColumnRef, sc)
	case *pg_query.Node_AConst, *pg_query.Node_ParamRef:
		return lin{}
	case *pg_query.Node_FuncCall:
		return a.funcCall(x.FuncCall, sc)
	case *pg_query.Node_SubLink:
		sl := x.SubLink
		res := a.query(sl.Subselect, sc)
		if sl.SubLinkType == pg_query.SubLinkType_EXISTS_SUBLINK {
			// EXISTS does not evaluate its target list.
			for _, c := range res.cols {
				c.st.used = true
			}
			return lin{}
		}
		l := a.expr(sl.Testexpr, sc)
		if a.enc != nil && (sl.SubLinkType == pg_query.SubLinkType_ANY_SUBLINK || sl.SubLinkType == pg_query.SubLinkType_ALL_SUBLINK) {
			a.checkSubLink(l, res)
		}
		l.add(consume(res.cols), 0)
		l.direct = false
		return l
	case *pg_query.Node_SelectStmt, *pg_query.Node_InsertStmt, *pg_query.Node_UpdateStmt, *pg_query.Node_DeleteStmt, *pg_query.Node_MergeStmt:
		res := a.query(n, sc)
		return lin{deps: consume(res.cols).deps}
	case *pg_query.Node_RangeVar:
		return lin{}
	case *pg_query.Node_AExpr:
		// Operators, IN, LIKE, BETWEEN, ...
		l := a.expr(x.AExpr.Lexpr, sc)
		r := a.expr(x.AExpr.Rexpr, sc)
		if a.enc != nil {
			a.checkCompare(x.AExpr, l, r)
		}
		l.add(r, 0)
		l.direct = false
		return l
	case *pg_query.Node_BoolExpr:
		var l lin
		for _, arg := range x.BoolExpr.Args {
			l.add(a.expr(arg, sc), 0)
		}
		l.direct = false
		return l
	case *pg_query.Node_TypeCast:
		// A cast changes the bytes: never direct.
		l := a.expr(x.TypeCast.Arg, sc)
		l.direct = false
		return l
	case *pg_query.Node_NullTest:
		l := a.expr(x.NullTest.Arg, sc)
		l.direct = false
		return l
	case *pg_query.Node_List:
		var l lin
		for _, it := range x.List.Items {
			l.add(a.expr(it, sc), 0)
		}
		l.direct = false
		return l
	}
	var l lin
	a.walk(innerMessage(n), sc, &l)
	l.direct = false
	return l
}

// walk adds the lineage of every expression under m to l.
func (a *analyzer) walk(m protoreflect.Message, sc *scope, l *lin) {
	if m == nil {
		return
	}
	switch x := m.Interface().(type) {
	case *pg_query.Node:
		l.add(a.expr(x, sc), 0)
		return
	case *pg_query.SelectStmt:
		l.add(consume(a.selectQuery(x, sc).cols), 0)
		return
	case *pg_query.WindowDef:
		a.windowDef(x, sc)
		return
	case *pg_query.FuncCall:
		l.add(a.funcCall(x, sc), 0)
		return
	case *pg_query.RangeVar, *pg_query.TypeName, *pg_query.Alias:
		return
	}
	forEachChild(m, func(c protoreflect.Message) { a.walk(c, sc, l) })
}

// generic records every column reference under n with clause, for
// statements and nodes the analysis does not model.
func (a *analyzer) generic(n *pg_query.Node, sc *scope, clause ClauseSet) {
	var l lin
	a.walk(innerMessage(n), sc, &l)
	a.record(l, clause)
}

func (a *analyzer) funcCall(f *pg_query.FuncCall, sc *scope) lin {
	var l lin
	var bits ClauseSet
	if a.isAggregate(f) {
		bits = ClauseAggregateArg
	}
	for _, arg := range f.Args {
		l.add(a.expr(arg, sc), bits)
	}
	for _, o := range f.AggOrder {
		if sb := o.GetSortBy(); sb != nil {
			ol := a.expr(sb.Node, sc)
			a.checkOrder(ol)
			a.record(ol, ClauseGroupOrder|bits)
		}
	}
	if f.AggFilter != nil {
		a.record(a.expr(f.AggFilter, sc), ClauseFilter|bits)
	}
	if f.Over != nil {
		a.windowDef(f.Over, sc)
	}
	l.direct = false
	return l
}

// isAggregate reports whether f calls an aggregate function.
func (a *analyzer) isAggregate(f *pg_query.FuncCall) bool {
	if f.AggStar || f.AggDistinct || len(f.AggOrder) > 0 || f.AggFilter != nil || f.AggWithinGroup {
		return true
	}
	var parts []string
	for _, n := range f.Funcname {
		parts = append(parts, n.GetString_().GetSval())
	}
	var fns []*catalog.Function
	switch len(parts) {
	case 1:
		fns = a.s.Catalog.ResolveFunctions(a.path, parts[0])
	case 2:
		fns = a.s.Catalog.Functions(catalog.Name{Schema: parts[0], Name: parts[1]})
	}
	for _, fn := range fns {
		if fn.Kind == 'a' {
			return true
		}
	}
	return false
}

// windowDef records a window's PARTITION BY and ORDER BY (and frame
// offsets).
func (a *analyzer) windowDef(w *pg_query.WindowDef, sc *scope) {
	for _, p := range w.PartitionClause {
		a.record(a.expr(p, sc), ClauseGroupOrder)
	}
	for _, o := range w.OrderClause {
		if sb := o.GetSortBy(); sb != nil {
			l := a.expr(sb.Node, sc)
			a.checkOrder(l)
			a.record(l, ClauseGroupOrder)
		}
	}
	a.record(a.expr(w.StartOffset, sc), ClauseOther)
	a.record(a.expr(w.EndOffset, sc), ClauseOther)
}
