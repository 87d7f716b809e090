package rewrite

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/pgveil/pgveil/catalog"
)

// Casts that run user code (rule "function").
//
// A cast whose pg_cast entry names a function that is not built in runs
// that function, and a cast to a domain runs the domain's constraints,
// which may call such functions: the function-name checks never see
// either. The analyser does not type expressions, so it reasons about the
// types a statement can produce values of: the row and column types of
// every relation it names, every type it names (casts, PREPARE parameter
// types), each followed through domains, arrays, composite attributes and
// ranges (catalog.Snapshot.TypeClosure). Built-in types can always
// appear (literals, built-in functions). A user cast from S to T is
// reachable when S can appear. Then:
//
//   - an explicit cast to T (x::T, CAST(x AS T), T 'x') is refused when
//     a reachable user cast leads to T (or to what T is made of), unless x
//     is a constant or a cast whose type cannot be S;
//   - a statement is refused when a reachable user cast is implicit and
//     T can appear too, or is an assignment cast and T is the type of a
//     column the statement assigns;
//   - a statement is refused when a value may be cast or assigned to a
//     domain whose constraints call a function or operator that is not
//     built in (an explicit cast, an assigned column, a masked column the
//     masking sub-query casts back to its domain).

// Built-in type OIDs (src/include/catalog/pg_type.dat) of constants.
const (
	oidBool    = 16
	oidInt8    = 20
	oidInt4    = 23
	oidBit     = 1560
	oidVarbit  = 1562
	oidNumeric = 1700
)

// castUse is one explicit cast of a statement.
type castUse struct {
	target *catalog.Type
	name   string
	// known says the source types are known: those of src (empty for a
	// string or NULL constant, which the target type's input function
	// reads without any cast).
	known bool
	src   map[uint32]bool
}

// typeName resolves a type name as the server would and records the type
// as one the statement can produce values of.
func (w *walker) typeName(tn *pg_query.TypeName) (*catalog.Type, error) {
	if tn.PctType {
		return nil, refuse("unsupported-syntax", "%%TYPE is not supported for masked sessions")
	}
	var parts []string
	for _, n := range tn.Names {
		s := n.GetString_()
		if s == nil {
			return nil, refuse("unsupported-syntax", "unexpected type name")
		}
		parts = append(parts, s.Sval)
	}
	var t *catalog.Type
	switch len(parts) {
	case 1:
		t = w.s.Catalog.ResolveType(w.path(), "", parts[0])
	case 2:
		t = w.s.Catalog.ResolveType(w.path(), parts[0], parts[1])
	default:
		return nil, refuse("unsupported-syntax", "type name %s is not supported for masked sessions", strings.Join(parts, "."))
	}
	if t == nil {
		return nil, refuse("catalog", "type %s is not known to pgveil (not in its catalog snapshot on this search_path); retry after the catalog refresh", strings.Join(parts, "."))
	}
	if len(tn.ArrayBounds) > 0 {
		// T[] is T's array type; its closure is T's and the array's.
		w.s.Catalog.TypeClosure(t.OID, w.types)
		if arr := w.arrayOf(t.OID); arr != nil {
			t = arr
		}
	}
	w.s.Catalog.TypeClosure(t.OID, w.types)
	return t, nil
}

// arrayOf returns the array type whose elements are elem, or nil.
func (w *walker) arrayOf(elem uint32) *catalog.Type {
	t := w.s.Catalog.Type(elem)
	if t == nil {
		return nil
	}
	name := "_" + t.Name.Name
	if a := w.s.Catalog.ResolveType(catalog.SearchPath{}, t.Name.Schema, name); a != nil && a.Elem == elem {
		return a
	}
	return nil
}

// typeCast records an explicit cast for the check in checkCasts.
func (w *walker) typeCast(tc *pg_query.TypeCast) error {
	if tc.TypeName == nil {
		return refuse("unsupported-syntax", "cast without a type")
	}
	t, err := w.typeName(tc.TypeName)
	if err != nil {
		return err
	}
	u := castUse{target: t, name: t.Name.String(), src: map[uint32]bool{}}
	switch x := tc.Arg.GetNode().(type) {
	case *pg_query.Node_AConst:
		u.known = true
		switch x.AConst.Val.(type) {
		case *pg_query.A_Const_Ival:
			u.src[oidInt4] = true
		case *pg_query.A_Const_Fval:
			// A large integer is int8 or numeric, a decimal numeric.
			u.src[oidInt8], u.src[oidNumeric] = true, true
		case *pg_query.A_Const_Boolval:
			u.src[oidBool] = true
		case *pg_query.A_Const_Bsval:
			u.src[oidBit], u.src[oidVarbit] = true, true
		}
		// A string or NULL constant has type unknown: the target's input
		// function reads it, no cast is looked up.
	case *pg_query.Node_TypeCast:
		if x.TypeCast.TypeName != nil {
			if inner, err := w.typeName(x.TypeCast.TypeName); err == nil {
				u.known = true
				w.s.Catalog.TypeClosure(inner.OID, u.src)
			}
		}
	}
	w.casts = append(w.casts, u)
	w.s.Catalog.TypeClosure(t.OID, w.castTo)
	return nil
}

// relationTypes records the types of rel's rows and columns as types the
// statement can produce values of.
func (w *walker) relationTypes(rel *catalog.Relation) {
	w.s.Catalog.TypeClosure(rel.RowType, w.types)
	for _, c := range rel.Columns {
		w.s.Catalog.TypeClosure(c.TypeOID, w.types)
	}
}

// assignedTypes records the types of the columns cols of rel, which the
// statement stores values into (converted in assignment context, checked
// against their domains).
func (w *walker) assignedTypes(rel *catalog.Relation, cols []string) {
	for _, name := range cols {
		if c := rel.Column(name); c != nil {
			w.s.Catalog.TypeClosure(c.TypeOID, w.assigned)
		}
	}
	w.castToColumns(rel, cols)
}

// castToColumns records the types of the columns cols of rel as types
// values are converted to.
func (w *walker) castToColumns(rel *catalog.Relation, cols []string) {
	for _, name := range cols {
		if c := rel.Column(name); c != nil {
			w.s.Catalog.TypeClosure(c.TypeOID, w.castTo)
		}
	}
}

// checkCasts refuses the statement if it may run a user cast function or
// a domain constraint that calls user code (see the comment at the top).
func (w *walker) checkCasts() error {
	snap := w.s.Catalog
	for oid := range w.castTo {
		if t := snap.Type(oid); t != nil && t.UserChecks != "" {
			return refuse("function", "a value converted to type %s is checked by %s, which is not built in", t.Name, t.UserChecks)
		}
	}
	casts := snap.UserCasts()
	if len(casts) == 0 {
		return nil
	}
	// A built-in type can appear in any statement.
	reachable := func(oid uint32) bool { return oid < firstNormalObjectID || w.types[oid] }
	for _, u := range w.casts {
		into := map[uint32]bool{}
		snap.TypeClosure(u.target.OID, into)
		for _, c := range casts {
			if !into[c.Target] || !reachable(c.Source) || (u.known && !u.src[c.Source]) {
				continue
			}
			return refuse("function", "a cast to %s may call %s, which is not built in", u.name, c.Func)
		}
	}
	for _, c := range casts {
		if !reachable(c.Source) {
			continue
		}
		how := ""
		switch {
		case c.Context == catalog.CastImplicit && reachable(c.Target):
			how = "implicitly"
		case c.Context == catalog.CastAssignment && w.assigned[c.Target]:
			how = "on assignment"
		default:
			continue
		}
		return refuse("function", "the server may convert %s to %s %s with %s, which is not built in",
			typeLabel(snap, c.Source), typeLabel(snap, c.Target), how, c.Func)
	}
	return nil
}

// firstNormalObjectID is FirstNormalObjectId (src/include/access/transam.h):
// objects with a lower OID were created by initdb.
const firstNormalObjectID = 16384

func typeLabel(s *catalog.Snapshot, oid uint32) string {
	if t := s.Type(oid); t != nil {
		return t.Name.String()
	}
	return "an unknown type"
}

// CheckParamTypes refuses the parameter types a client declared in an
// extended-protocol Parse when a value of one of them may be converted by
// a cast function that is not built in, or is checked by a domain
// constraint that calls user code: the statement's analysis does not see
// these types (rule "function"). Types 0 (unspecified) and built-in types
// without such casts pass; a type the snapshot does not know is refused
// (rule "catalog").
func CheckParamTypes(snap *catalog.Snapshot, oids []uint32) error {
	if len(oids) == 0 {
		return nil
	}
	set := map[uint32]bool{}
	for _, oid := range oids {
		if oid == 0 {
			continue
		}
		if snap.Type(oid) == nil {
			return refuse("catalog", "parameter type %d is not known to pgveil (not in its catalog snapshot); retry after the catalog refresh", oid)
		}
		snap.TypeClosure(oid, set)
	}
	for oid := range set {
		if t := snap.Type(oid); t != nil && t.UserChecks != "" {
			return refuse("function", "a parameter of type %s is checked by %s, which is not built in", t.Name, t.UserChecks)
		}
	}
	for _, c := range snap.UserCasts() {
		if set[c.Source] {
			return refuse("function", "a parameter of type %s may be converted by %s, which is not built in", typeLabel(snap, c.Source), c.Func)
		}
	}
	return nil
}
