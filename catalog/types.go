package catalog

import "slices"

// Type is one pg_type row, reduced to what the SQL analysis needs to
// follow a value's type to the types a coercion of it consults.
type Type struct {
	OID  uint32
	Name Name
	// Kind is typtype: 'b' base, 'c' composite, 'd' domain, 'e' enum,
	// 'p' pseudo-type, 'r' range, 'm' multirange.
	Kind byte
	// Builtin is true for types created by initdb (OID < 16384).
	Builtin bool
	// Base is, for a domain, the type it is declared over (typbasetype).
	Base uint32
	// Elem is, for an array type, its element type (typelem of a
	// variable-length type; fixed-length types such as point also have a
	// typelem, which is not an element type here and is left 0).
	Elem uint32
	// Relation is, for a composite type, its relation (typrelid).
	Relation uint32
	// RangeOf is, for a range type, its subtype, and for a multirange
	// type, its range type.
	RangeOf uint32
	// UserChecks names, for a domain, a function or operator that is not
	// built in and that one of its constraints calls: casting a value to
	// the domain runs it.
	UserChecks string
}

// CastContext is pg_cast.castcontext: where the server applies a cast.
type CastContext byte

// Cast contexts (pg_cast.castcontext).
const (
	CastExplicit   CastContext = 'e'
	CastAssignment CastContext = 'a'
	CastImplicit   CastContext = 'i'
)

// Cast is a pg_cast entry whose function is not built in: converting a
// value of type Source to Target calls Func with the caller's rights (or
// its owner's, for a SECURITY DEFINER function).
type Cast struct {
	Source, Target uint32
	Func           Name
	Context        CastContext
}

// Type returns the type with OID oid, or nil.
func (s *Snapshot) Type(oid uint32) *Type {
	return s.types[oid]
}

// ResolveType returns the type schema.name refers to under sp, or nil.
// An empty schema searches Path(sp), like relation names (PostgreSQL's
// TypenameGetTypid uses the same path, temporary schema included); the
// schema "pg_temp" means sp.TempSchema.
func (s *Snapshot) ResolveType(sp SearchPath, schema, name string) *Type {
	switch schema {
	case "":
		for _, sch := range s.Path(sp) {
			if t := s.typesByName[Name{sch, name}]; t != nil {
				return t
			}
		}
		return nil
	case "pg_temp":
		if sp.TempSchema == "" {
			return nil
		}
		schema = sp.TempSchema
	}
	return s.typesByName[Name{schema, name}]
}

// UserCasts returns the casts whose function is not built in, ordered by
// source, then target.
func (s *Snapshot) UserCasts() []Cast {
	return slices.Clone(s.casts)
}

// TypeClosure adds to set oid and every type a value of type oid is made
// of or coerced through, as PostgreSQL's coercion code follows them: the
// base type under a domain (find_coercion_pathway looks casts up between
// base types), the element type of an array (an array cast applies the
// element cast), the attribute types of a composite type (a row cast
// converts each field), the subtype of a range and the range of a
// multirange (functions of a range return its subtype). A type the
// snapshot does not know is added as it is.
func (s *Snapshot) TypeClosure(oid uint32, set map[uint32]bool) {
	if oid == 0 || set[oid] {
		return
	}
	set[oid] = true
	t := s.types[oid]
	if t == nil {
		return
	}
	s.TypeClosure(t.Base, set)
	s.TypeClosure(t.Elem, set)
	s.TypeClosure(t.RangeOf, set)
	if t.Relation != 0 {
		if r := s.relsByOID[t.Relation]; r != nil {
			for _, c := range r.Columns {
				s.TypeClosure(c.TypeOID, set)
			}
		}
	}
}
