// Package catalog owns pgveil's view of the database schema: a versioned,
// immutable snapshot of schemas, tables, partitions, columns and types,
// views and the relations they read, functions, the casts and domain
// constraints that call user functions, and role memberships, read from
// the server over the proxy's own connection and refreshed.
package catalog

import (
	"strings"
)

// Name is a schema-qualified object name, as PostgreSQL stores it.
type Name struct {
	Schema, Name string
}

// String returns the name as schema.name, double-quoting each part that is
// not a plain lower-case identifier. It is meant for messages: it does not
// quote SQL keywords, so it is not a substitute for proper deparsing.
func (n Name) String() string {
	if n.Schema == "" {
		return quoteIdent(n.Name)
	}
	return quoteIdent(n.Schema) + "." + quoteIdent(n.Name)
}

// IsZero reports whether n is the zero Name.
func (n Name) IsZero() bool {
	return n == Name{}
}

// compareNames orders names by schema, then name.
func compareNames(a, b Name) int {
	if c := strings.Compare(a.Schema, b.Schema); c != 0 {
		return c
	}
	return strings.Compare(a.Name, b.Name)
}

// quoteIdent double-quotes s unless it consists of lower-case ASCII
// letters, digits, underscores and dollar signs and does not start with a
// digit or a dollar sign (the unquoted identifier syntax of PostgreSQL
// documentation section 4.1.1, less upper case, which would be folded).
func quoteIdent(s string) string {
	plain := s != ""
	for i := 0; i < len(s) && plain; i++ {
		b := s[i]
		switch {
		case b >= 'a' && b <= 'z', b == '_':
		case (b >= '0' && b <= '9') || b == '$':
			plain = i > 0
		default:
			plain = false
		}
	}
	if plain {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// RelKind is pg_class.relkind.
type RelKind byte

// Relation kinds (pg_class.relkind).
const (
	KindTable        RelKind = 'r'
	KindPartitioned  RelKind = 'p'
	KindView         RelKind = 'v'
	KindMatView      RelKind = 'm'
	KindForeignTable RelKind = 'f'
	KindSequence     RelKind = 'S'
	KindComposite    RelKind = 'c'
)

// Relation is a table, view, partition or other relation.
type Relation struct {
	OID   uint32
	Name  Name
	Kind  RelKind
	Owner string
	// RowType is the relation's row type (pg_class.reltype), 0 if none.
	RowType uint32
	Columns []Column // user columns in attnum order, dropped ones left out
	// Parent is the partitioned table this is a partition of (zero if none).
	Parent Name
	// Reads lists, for a view or materialized view, every table, partition
	// or view its query reads, transitively through other views.
	//
	// Materialized views count as views here, since their contents come
	// from what they read. The list is sorted and names what the queries
	// name: the partitions and inheritance children those reach are not
	// listed (Snapshot.Descendants has them).
	Reads []Name

	// Inherits lists the direct parents of a table in classic (INHERITS,
	// not partitioning) inheritance, in pg_inherits.inhseqno order.
	Inherits []Name

	// ForeignKeys are the relation's foreign-key constraints.
	ForeignKeys []ForeignKey
	// Constraints are its CHECK constraints and unique and exclusion
	// indexes: whether a write passes them depends on the columns they
	// use.
	Constraints []Constraint
}

// Constraint is a CHECK constraint ('c'), a unique index ('u') or an
// exclusion constraint's index ('x') of a relation.
type Constraint struct {
	Kind byte
	// Columns are the relation's columns the constraint uses: a CHECK's
	// expression, an index's key columns, key expressions and partial
	// index predicate.
	Columns []string
	// Validated is false for a CHECK constraint added NOT VALID, which
	// existing rows may violate.
	Validated bool
}

// Column returns the user column called name, or nil.
func (r *Relation) Column(name string) *Column {
	for i := range r.Columns {
		if r.Columns[i].Name == name {
			return &r.Columns[i]
		}
	}
	return nil
}

// ForeignKey is a foreign-key constraint: Columns of the relation
// reference RefColumns of References, in order.
type ForeignKey struct {
	Columns    []string
	References Name
	RefColumns []string
}

// Column is one user column.
type Column struct {
	Name    string
	Num     int16
	TypeOID uint32
	// Type is format_type(atttypid, atttypmod), e.g. "character varying(20)".
	//
	// Load computes it with search_path set to pg_catalog alone, so types
	// outside pg_catalog come schema-qualified ("public.mood"), and a
	// cast to Type means the same type in any session.
	Type    string
	NotNull bool

	// BaseTypeOID is, for a column whose type is a domain, the type under
	// the domain (through domains over domains); otherwise TypeOID.
	BaseTypeOID uint32
	// BaseType is format_type of BaseTypeOID with the domain's type
	// modifier, e.g. "numeric(10,2)" for a domain over numeric(10,2);
	// otherwise Type.
	BaseType string
	// Category is pg_type.typcategory of the base type: 'S' string, 'N'
	// numeric, 'D' date/time, 'B' boolean, 'A' array, 'U' user-defined, and
	// so on (PostgreSQL documentation, pg_type, "typcategory Codes").
	Category byte
}

// Function is a function or procedure.
type Function struct {
	OID             uint32
	Name            Name
	Kind            byte // prokind: f, p, a, w; or o for an operator (pg_operator)
	SecurityDefiner bool
	Language        string
	// Builtin is true for objects created by initdb (OID < 16384,
	// FirstNormalObjectId in src/include/access/transam.h).
	Builtin bool

	// ArgTypes are the OIDs of the input argument types (proargtypes).
	ArgTypes []uint32
	// ReturnType is the OID of the result type (prorettype).
	ReturnType uint32
	// ReturnsSet is true for set-returning functions (proretset).
	ReturnsSet bool
	// Volatility is provolatile: 'i' immutable, 's' stable, 'v' volatile.
	Volatility byte
}

// Role is a database role.
type Role struct {
	Name      string
	OID       uint32
	Superuser bool
	BypassRLS bool
	// MemberOf lists every role this role is a member of, directly or
	// through other roles (not including itself).
	//
	// The list is sorted. It follows every membership grant regardless of
	// INHERIT (pg_has_role's MEMBER sense), and includes the implicit
	// membership of the database owner in pg_database_owner.
	MemberOf []string

	// Inherit is pg_roles.rolinherit.
	Inherit bool
	// CanLogin is pg_roles.rolcanlogin.
	CanLogin bool
}
