package rewrite

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/pgveil/pgveil/catalog"
)

// walker analyses and rewrites one statement.
type walker struct {
	s      *Session
	ctes   []map[string]bool // CTE names in scope, innermost last
	masked []catalog.Name
	// denied holds the names of columns of substituted relations whose
	// class is "deny": no explicit reference to them is allowed.
	denied map[string]bool
	// refs holds every name used in a column reference, checked against
	// denied when the statement has been walked.
	refs map[string]bool
	// explain is set inside EXPLAIN: any protected relation is refused.
	explain bool
	// qualifiedRefs are column references of the form schema.table.column,
	// fixed up in finish once substitutions are known.
	qualifiedRefs []*pg_query.ColumnRef
	// unaliased maps a substituted relation without a user alias to the
	// alias its sub-query got (its bare name).
	unaliased map[catalog.Name]string
	// ambiguous holds the bare names that more than one unaliased
	// relation of the FROM list being walked carries (FROM a.t, b.t):
	// their masking sub-queries get distinct aliases.
	ambiguous map[string]bool
	// placeholders are the masking sub-queries of the whole text, in
	// order; substituted is set by each substitution.
	placeholders *[]placeholder
	substituted  bool
	// types holds the types the statement can produce values of,
	// assigned those of the columns it stores into, castTo those values
	// are converted to (explicit casts, assignments, masked columns cast
	// back to their type), each closed over catalog.Snapshot.TypeClosure;
	// casts are its explicit casts. See cast.go.
	types, assigned, castTo map[uint32]bool
	casts                   []castUse
}

// placeholder is a relation name standing in for a masking sub-query.
type placeholder struct {
	name, sql string
}

// placeholderPrefix starts every placeholder name. A client text that
// contains it is refused (see Rewrite), so a placeholder can never be
// confused with anything the client wrote.
const placeholderPrefix = "pgveil_subst_"

func newWalker(s *Session, ph *[]placeholder) *walker {
	return &walker{s: s, denied: map[string]bool{}, refs: map[string]bool{}, unaliased: map[catalog.Name]string{}, placeholders: ph,
		types: map[uint32]bool{}, assigned: map[uint32]bool{}, castTo: map[uint32]bool{}}
}

// finish completes a statement: schema-qualified column references to a
// substituted relation lose their schema (the sub-query's alias is the bare
// relation name), and denied columns are checked.
func (w *walker) finish() error {
	for _, c := range w.qualifiedRefs {
		if len(c.Fields) < 3 {
			continue
		}
		schema, table := c.Fields[0].GetString_(), c.Fields[1].GetString_()
		if schema == nil || table == nil {
			continue
		}
		if alias, ok := w.unaliased[catalog.Name{Schema: schema.Sval, Name: table.Sval}]; ok {
			c.Fields = append([]*pg_query.Node{pg_query.MakeStrNode(alias)}, c.Fields[2:]...)
		}
	}
	if err := w.checkDenied(); err != nil {
		return err
	}
	return w.checkCasts()
}

// checkDenied refuses the statement if it names a denied column anywhere.
func (w *walker) checkDenied() error {
	for name := range w.denied {
		if w.refs[name] {
			return refuse("deny", "column %q may not be referenced", name)
		}
	}
	return nil
}

// allowedNodes are the node types a masked session's statements may
// contain beyond those handled explicitly. Anything else is refused: an
// unknown shape is never passed through.
var allowedNodes = map[string]bool{}

func init() {
	for _, n := range []string{
		"Alias", "TypeName", "ColumnRef", "ParamRef", "A_Expr", "TypeCast", "CollateClause",
		"A_Star", "A_Indices", "A_Indirection", "A_ArrayExpr", "ResTarget", "MultiAssignRef",
		"SortBy", "WindowDef", "GroupingSet", "GroupingFunc", "LockingClause", "BoolExpr",
		"SubLink", "CaseExpr", "CaseWhen", "CoalesceExpr", "MinMaxExpr", "NullTest",
		"BooleanTest", "RowExpr", "SQLValueFunction", "XmlExpr", "XmlSerialize", "NamedArgExpr",
		"SetToDefault", "CurrentOfExpr", "A_Const", "Integer", "Float", "Boolean", "String",
		"BitString", "List", "DefElem", "CTESearchClause", "CTECycleClause", "OnConflictClause",
		"InferClause", "IndexElem", "RangeTableFuncCol",
	} {
		allowedNodes["pg_query."+n] = true
	}
}

// node analyses a generic node.
func (w *walker) node(n *pg_query.Node) error {
	if n == nil || n.Node == nil {
		return nil
	}
	switch x := n.Node.(type) {
	case *pg_query.Node_SelectStmt:
		return w.selectStmt(x.SelectStmt)
	case *pg_query.Node_InsertStmt:
		return w.insertStmt(x.InsertStmt)
	case *pg_query.Node_UpdateStmt:
		return w.updateStmt(x.UpdateStmt)
	case *pg_query.Node_DeleteStmt:
		return w.deleteStmt(x.DeleteStmt)
	case *pg_query.Node_FuncCall:
		if err := w.funcCall(x.FuncCall); err != nil {
			return err
		}
		return w.fields(x.FuncCall.ProtoReflect(), nil)
	case *pg_query.Node_ColumnRef:
		return w.columnRef(x.ColumnRef)
	case *pg_query.Node_AIndirection:
		return w.indirection(x.AIndirection)
	case *pg_query.Node_SubLink:
		// x op ANY (subquery), x IN (subquery) (op "="), (a, b) op
		// (subquery): the operator resolves through search_path.
		if _, err := w.operatorName(x.SubLink.OperName); err != nil {
			return err
		}
	case *pg_query.Node_SortBy:
		if _, err := w.operatorName(x.SortBy.UseOp); err != nil {
			return err
		}
	case *pg_query.Node_CaseExpr:
		// CASE x WHEN v compares with "=".
		if x.CaseExpr.Arg != nil {
			if _, err := w.operatorName([]*pg_query.Node{pg_query.MakeStrNode("=")}); err != nil {
				return err
			}
		}
	case *pg_query.Node_TypeCast:
		if err := w.typeCast(x.TypeCast); err != nil {
			return err
		}
	case *pg_query.Node_AExpr:
		if err := w.operator(x.AExpr); err != nil {
			return err
		}
		return w.fields(x.AExpr.ProtoReflect(), nil)
	case *pg_query.Node_RangeVar:
		return refuse("unsupported-syntax", "a relation reference in an unsupported position")
	}
	return w.message(innerMessage(n))
}

// innerMessage returns the message a Node wraps.
func innerMessage(n *pg_query.Node) protoreflect.Message {
	m := n.ProtoReflect()
	fd := m.WhichOneof(m.Descriptor().Oneofs().ByName("node"))
	if fd == nil {
		return nil
	}
	return m.Get(fd).Message()
}

// message analyses a message that is not wrapped in a Node.
func (w *walker) message(m protoreflect.Message) error {
	if m == nil {
		return nil
	}
	switch x := m.Interface().(type) {
	case *pg_query.Node:
		return w.node(x)
	case *pg_query.SelectStmt:
		return w.selectStmt(x)
	case *pg_query.FuncCall:
		if err := w.funcCall(x); err != nil {
			return err
		}
	case *pg_query.TypeName:
		if _, err := w.typeName(x); err != nil {
			return err
		}
	}
	name := string(m.Descriptor().FullName())
	if !allowedNodes[name] {
		return refuse("unsupported-syntax", "%s is not supported for masked sessions", strings.TrimPrefix(name, "pg_query."))
	}
	return w.fields(m, nil)
}

// fields analyses every message-valued field of m except those in skip.
func (w *walker) fields(m protoreflect.Message, skip map[protoreflect.Name]bool) error {
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind || skip[fd.Name()] {
			return true
		}
		if fd.IsList() {
			l := v.List()
			for i := 0; i < l.Len() && err == nil; i++ {
				err = w.message(l.Get(i).Message())
			}
		} else {
			err = w.message(v.Message())
		}
		return err == nil
	})
	return err
}

// forEachChild calls f with every message-valued field of m, list items
// one by one: the step of the whole-tree walks that need no pruning per
// field.
func forEachChild(m protoreflect.Message, f func(protoreflect.Message)) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind {
			return true
		}
		if fd.IsList() {
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				f(l.Get(i).Message())
			}
		} else {
			f(v.Message())
		}
		return true
	})
}

// pushCTEs analyses a WITH clause and brings its names into scope; the
// caller pops the scope when the statement ends.
func (w *walker) pushCTEs(wc *pg_query.WithClause) error {
	scope := map[string]bool{}
	w.ctes = append(w.ctes, scope)
	var names []string
	for _, c := range wc.Ctes {
		cte := c.GetCommonTableExpr()
		if cte == nil {
			return refuse("unsupported-syntax", "unexpected WITH item")
		}
		names = append(names, cte.Ctename)
	}
	if wc.Recursive {
		// In WITH RECURSIVE every name is visible in every query.
		for _, n := range names {
			scope[n] = true
		}
	}
	for i, c := range wc.Ctes {
		cte := c.GetCommonTableExpr()
		if err := w.node(cte.Ctequery); err != nil {
			return err
		}
		if err := w.fields(cte.ProtoReflect(), map[protoreflect.Name]bool{"ctequery": true}); err != nil {
			return err
		}
		// Without RECURSIVE a query sees only the CTEs before it, so a
		// reference to its own name inside it means the real table.
		scope[names[i]] = true
	}
	return nil
}

func (w *walker) popCTEs() { w.ctes = w.ctes[:len(w.ctes)-1] }

func (w *walker) isCTE(name string) bool {
	for i := len(w.ctes) - 1; i >= 0; i-- {
		if w.ctes[i][name] {
			return true
		}
	}
	return false
}

func (w *walker) selectStmt(s *pg_query.SelectStmt) error {
	if s == nil {
		return nil
	}
	if s.IntoClause != nil {
		return refuse("ddl", "SELECT INTO creates a table, which masked sessions may not do")
	}
	if s.WithClause != nil {
		if err := w.pushCTEs(s.WithClause); err != nil {
			return err
		}
		defer w.popCTEs()
	}
	if err := w.fromList(s.FromClause); err != nil {
		return err
	}
	return w.fields(s.ProtoReflect(), map[protoreflect.Name]bool{"with_clause": true, "from_clause": true})
}

// fromList analyses a FROM list (or USING list).
func (w *walker) fromList(items []*pg_query.Node) error {
	outer := w.ambiguous
	w.ambiguous = ambiguousNames(items)
	defer func() { w.ambiguous = outer }()
	for _, f := range items {
		if err := w.fromItem(f); err != nil {
			return err
		}
	}
	return nil
}

// ambiguousNames returns the bare names carried by more than one unaliased
// relation among items, joins included.
func ambiguousNames(items []*pg_query.Node) map[string]bool {
	count := map[string]int{}
	var visit func(n *pg_query.Node)
	visit = func(n *pg_query.Node) {
		switch x := n.GetNode().(type) {
		case *pg_query.Node_RangeVar:
			if x.RangeVar.Alias == nil {
				count[x.RangeVar.Relname]++
			}
		case *pg_query.Node_JoinExpr:
			visit(x.JoinExpr.Larg)
			visit(x.JoinExpr.Rarg)
		}
	}
	for _, n := range items {
		visit(n)
	}
	out := map[string]bool{}
	for name, c := range count {
		if c > 1 {
			out[name] = true
		}
	}
	return out
}

// fromItem analyses one FROM-list item, substituting protected relations.
func (w *walker) fromItem(n *pg_query.Node) error {
	switch x := n.Node.(type) {
	case *pg_query.Node_RangeVar:
		return w.substitute(n, x.RangeVar)
	case *pg_query.Node_JoinExpr:
		j := x.JoinExpr
		if err := w.fromItem(j.Larg); err != nil {
			return err
		}
		if err := w.fromItem(j.Rarg); err != nil {
			return err
		}
		for _, u := range j.UsingClause {
			if s := u.GetString_(); s != nil {
				w.refs[s.Sval] = true
			}
		}
		if len(j.UsingClause) > 0 || j.IsNatural {
			// The join columns are compared with "=".
			if _, err := w.operatorName([]*pg_query.Node{pg_query.MakeStrNode("=")}); err != nil {
				return err
			}
		}
		return w.fields(j.ProtoReflect(), map[protoreflect.Name]bool{"larg": true, "rarg": true})
	case *pg_query.Node_RangeSubselect:
		return w.fields(x.RangeSubselect.ProtoReflect(), nil)
	case *pg_query.Node_RangeFunction:
		return w.fields(x.RangeFunction.ProtoReflect(), nil)
	case *pg_query.Node_RangeTableSample:
		w.substituted = false
		if err := w.fromItem(x.RangeTableSample.Relation); err != nil {
			return err
		}
		if w.substituted {
			return refuse("tablesample", "TABLESAMPLE on a protected relation is not supported for masked sessions")
		}
		for _, a := range x.RangeTableSample.Args {
			if err := w.node(a); err != nil {
				return err
			}
		}
		return w.node(x.RangeTableSample.Repeatable)
	case *pg_query.Node_RangeTableFunc:
		return w.fields(x.RangeTableFunc.ProtoReflect(), nil)
	default:
		return refuse("unsupported-syntax", "this kind of FROM item is not supported for masked sessions")
	}
}

// columnRef records the names a column reference uses (see checkDenied).
func (w *walker) columnRef(c *pg_query.ColumnRef) error {
	if len(c.Fields) >= 3 {
		w.qualifiedRefs = append(w.qualifiedRefs, c)
	}
	for _, f := range c.Fields {
		switch x := f.Node.(type) {
		case *pg_query.Node_String_:
			w.refs[x.String_.Sval] = true
		case *pg_query.Node_AStar:
			w.refs["*"] = true
		default:
			return refuse("unsupported-syntax", "unexpected column reference")
		}
	}
	// a.f may be a call of function f on the row a (PostgreSQL
	// documentation §38.5.9, "SQL Functions on Composite Types"): the
	// last name must not be a function that is not built in.
	if len(c.Fields) >= 2 {
		if last := c.Fields[len(c.Fields)-1].GetString_(); last != nil {
			return w.attributeCall(last.Sval)
		}
	}
	return nil
}

// indirection analyses (expr).name, (expr)[i] and (expr).*: each name
// selects a field or, like a.f in a column reference, calls function name
// on expr (('x'::text).lower is lower('x')), so it gets the same check.
func (w *walker) indirection(a *pg_query.A_Indirection) error {
	if err := w.node(a.Arg); err != nil {
		return err
	}
	for _, f := range a.Indirection {
		switch x := f.Node.(type) {
		case *pg_query.Node_String_:
			w.refs[x.String_.Sval] = true
			if err := w.attributeCall(x.String_.Sval); err != nil {
				return err
			}
		case *pg_query.Node_AStar:
			w.refs["*"] = true
		case *pg_query.Node_AIndices:
			if err := w.node(f); err != nil {
				return err
			}
		default:
			return refuse("unsupported-syntax", "unexpected indirection")
		}
	}
	return nil
}

// attributeCall refuses name in attribute notation when a function of
// that name that is not built in is on the search path.
func (w *walker) attributeCall(name string) error {
	for _, fn := range w.s.Catalog.ResolveFunctions(w.path(), name) {
		if !fn.Builtin {
			return refuse("function", "%s may call function %s.%s, which is not built in", name, fn.Name.Schema, name)
		}
	}
	return nil
}

// clone returns a deep copy of a parsed node.
func clone(n *pg_query.Node) *pg_query.Node { return proto.Clone(n).(*pg_query.Node) }
