// Package rules owns pgveil's policy: loading and validating the policy
// file, resolving a session's roles to a treatment per class of data, and
// the masking function library in its two agreeing forms (SQL and Go).
package rules

// Policy is a validated, immutable policy file.
type Policy struct {
	// Version is the file's "version:" field (1).
	Version int
	// Hash identifies the policy content (hex SHA-256 of the file bytes,
	// first 16 characters); caches key on it.
	Hash string
	// Source is the file name used in error messages.
	Source string
	// Classes by name.
	Classes map[string]*Class
	// Columns by schema-qualified column.
	Columns map[ColumnKey]*ColumnRule
	// Roles by database role name.
	Roles map[string]*RoleGrant
	// RowFilters in file order.
	RowFilters []RowFilter
	// UnknownRoles is "mask" (the default) or "reject": what happens to a
	// session none of whose roles appears under roles.
	UnknownRoles string
}

// ColumnKey names a column: schema, table (or view) and column, as
// PostgreSQL stores them (case-sensitive, unquoted).
type ColumnKey struct {
	Schema, Table, Column string
}

// Class is a kind of data and how it is masked.
type Class struct {
	Name string
	Mask Mask
}

// ColumnRule is the classification of one column.
type ColumnRule struct {
	Key   ColumnKey
	Class *Class
	// Encrypted is non-nil when the column is stored encrypted.
	Encrypted *Encryption
}

// Encryption says how an encrypted column is stored.
type Encryption struct {
	Key        string
	Mode       string // "transit" or "envelope"
	Searchable bool
}

// RoleGrant is what one database role may see.
type RoleGrant struct {
	Name       string
	Raw        map[string]bool // class names seen raw
	RawAll     bool
	Decrypt    map[string]bool // class names decrypted
	DecryptAll bool
}

// RowFilter restricts the rows of a table for some roles.
type RowFilter struct {
	Schema, Table string
	Roles         []string
	// Where is an SQL boolean expression over the table's columns.
	Where string
}

// Treatment is how a session sees a class; larger is more permissive.
type Treatment int

// Treatments, least to most permissive.
const (
	TreatMask Treatment = iota
	TreatRaw
	TreatDecrypt
)
