package catalog

import (
	"slices"
	"strings"
	"time"
)

// Snapshot is a consistent picture of one database's schema and the
// cluster's roles, read in a single transaction. A Snapshot is immutable
// once built and safe for concurrent use; callers must not modify the
// relations, columns, functions, roles or slices it returns.
type Snapshot struct {
	// Version numbers the snapshots of one Catalog: it increments by one
	// per successful load. Load alone leaves it 0.
	Version uint64
	// LoadedAt is when the load started (the transaction's snapshot time,
	// as measured by the proxy's clock).
	LoadedAt time.Time
	// Database is current_database() of the loading connection.
	Database string
	// DatabaseOwner is the owner of Database (pg_database.datdba), who is
	// implicitly a member of pg_database_owner.
	DatabaseOwner string
	// ServerVersion is server_version_num, e.g. 150004.
	ServerVersion int

	schemas     map[string]*schema
	schemaNames []string // sorted
	rels        map[Name]*Relation
	relsByOID   map[uint32]*Relation
	relList     []*Relation // sorted by name
	// shadows holds the names of indexes, which occupy a name in their
	// schema (so they hide same-named relations later on the path) but are
	// not relations a query can read.
	shadows map[Name]struct{}
	// children maps a relation to its direct inheritance children,
	// partitions and classic inheritance alike, sorted.
	children   map[Name][]Name
	dependents map[Name][]Name // sorted
	funcs      map[Name][]*Function
	funcsNamed map[string][]*Function
	// types indexes pg_type by OID and by name; casts are the pg_cast
	// entries whose function is not built in.
	types       map[uint32]*Type
	typesByName map[Name]*Type
	casts       []Cast
	roles       map[string]*Role
	// privs maps a role name to the sorted OIDs of every role whose
	// privileges it has (itself and the roles it inherits from), the set
	// PostgreSQL's has_privs_of_role consults for ACL checks.
	privs map[string][]uint32
}

// schema is one pg_namespace row.
type schema struct {
	oid   uint32
	name  string
	owner string
	// usage holds the grantee OIDs holding USAGE on the schema, with 0 for
	// PUBLIC, from aclexplode of the schema's ACL or its default.
	usage []uint32
}

// Relation returns the relation called n, or nil. Indexes and TOAST tables
// are not in the snapshot.
func (s *Snapshot) Relation(n Name) *Relation {
	return s.rels[n]
}

// RelationByOID returns the relation with pg_class OID oid, or nil.
func (s *Snapshot) RelationByOID(oid uint32) *Relation {
	return s.relsByOID[oid]
}

// Relations returns every relation in the snapshot, sorted by name.
func (s *Snapshot) Relations() []*Relation {
	return slices.Clone(s.relList)
}

// Schemas returns the names of all schemas except the TOAST ones, sorted.
func (s *Snapshot) Schemas() []string {
	return slices.Clone(s.schemaNames)
}

// Partitions returns every descendant of the partitioned table n:
// its partitions, their partitions, and so on, sorted by name. It returns
// nil if n has no partitions or is not in the snapshot.
func (s *Snapshot) Partitions(n Name) []Name {
	return s.descendants(n, true)
}

// Descendants returns every table that inherits from n, directly or
// indirectly, through partitioning or classic inheritance, sorted by name.
// These are the tables whose rows a query on n without ONLY also reads.
func (s *Snapshot) Descendants(n Name) []Name {
	return s.descendants(n, false)
}

func (s *Snapshot) descendants(n Name, partitionsOnly bool) []Name {
	var out []Name
	seen := map[Name]bool{n: true}
	stack := []Name{n}
	for len(stack) > 0 {
		cur := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, child := range s.children[cur] {
			if seen[child] {
				continue
			}
			if partitionsOnly && s.rels[child].Parent != cur {
				continue
			}
			seen[child] = true
			out = append(out, child)
			stack = append(stack, child)
		}
	}
	slices.SortFunc(out, compareNames)
	return out
}

// Ancestors returns every table rel inherits from, through partitioning
// and classic inheritance, nearest first.
func (s *Snapshot) Ancestors(rel *Relation) []Name {
	var out []Name
	seen := map[Name]bool{rel.Name: true}
	queue := []*Relation{rel}
	for len(queue) > 0 {
		r := queue[0]
		queue = queue[1:]
		parents := append([]Name(nil), r.Inherits...)
		if !r.Parent.IsZero() {
			parents = append([]Name{r.Parent}, parents...)
		}
		for _, p := range parents {
			if seen[p] {
				continue
			}
			seen[p] = true
			out = append(out, p)
			if pr := s.Relation(p); pr != nil {
				queue = append(queue, pr)
			}
		}
	}
	return out
}

// Dependents returns the views and materialized views that read n,
// directly or through other views, sorted by name: every view whose
// Reads contains n.
func (s *Snapshot) Dependents(n Name) []Name {
	return slices.Clone(s.dependents[n])
}

// Functions returns the functions, procedures and aggregates called n
// (all overloads), ordered by OID.
func (s *Snapshot) Functions(n Name) []*Function {
	return slices.Clone(s.funcs[n])
}

// FunctionsNamed returns the functions called name in every schema,
// ordered by schema, then OID.
func (s *Snapshot) FunctionsNamed(name string) []*Function {
	return slices.Clone(s.funcsNamed[name])
}

// Role returns the role called name, or nil.
func (s *Snapshot) Role(name string) *Role {
	return s.roles[name]
}

// RolesOf returns user and every role user is a member of, directly or
// through other roles, sorted and without duplicates. PUBLIC, which every
// role implicitly belongs to, is not included. A user the snapshot does not
// know (for example a role created after the load) yields just the user
// itself.
func (s *Snapshot) RolesOf(user string) []string {
	r := s.roles[user]
	if r == nil {
		return []string{user}
	}
	out := make([]string, 0, len(r.MemberOf)+1)
	out = append(out, user)
	out = append(out, r.MemberOf...)
	slices.Sort(out)
	return slices.Compact(out)
}

// SearchPath is a session's name-resolution context: the search_path
// setting, the current user and the session's temporary schema. Resolve
// and Path interpret it the way PostgreSQL's recomputeNamespacePath
// (src/backend/catalog/namespace.c) does.
type SearchPath struct {
	// Schemas are the elements of search_path as identifiers, already
	// dequoted and case-folded (ParseSearchPath does that for a
	// search_path string). The element "$user" (written "$user", with the
	// quotes, in SQL) stands for the schema named like User; "pg_temp"
	// stands for TempSchema; "pg_catalog" places the system catalog
	// explicitly. Schemas that do not exist, or on which User lacks USAGE,
	// are skipped.
	Schemas []string
	// User is the current user (current_user, which SET ROLE changes): it
	// expands "$user" and is the role whose USAGE privilege on each schema
	// is checked. A user the snapshot does not know is treated as holding
	// only PUBLIC's privileges. "" skips "$user" and all privilege checks.
	User string
	// TempSchema is the session's temporary schema (pg_my_temp_schema(),
	// e.g. "pg_temp_3"), or "" if the session has not created temporary
	// objects yet. Unless search_path names "pg_temp" explicitly, it is
	// searched first, before pg_catalog. (Querying current_schemas or
	// current_schema creates the temporary schema when pg_temp comes
	// first in search_path; pg_my_temp_schema does not.)
	TempSchema string
}

// Path returns the schemas, in order, that an unqualified relation name is
// looked up in under sp: what current_schemas(true) reports, including the
// implicit temporary schema and pg_catalog.
func (s *Snapshot) Path(sp SearchPath) []string {
	var explicit []string
	add := func(name string) {
		if !slices.Contains(explicit, name) {
			explicit = append(explicit, name)
		}
	}
	for _, elem := range sp.Schemas {
		switch elem {
		case "$user":
			if sp.User == "" {
				continue
			}
			if _, ok := s.schemas[sp.User]; ok && s.hasUsage(sp.User, sp.User) {
				add(sp.User)
			}
		case "pg_temp":
			// The temporary schema needs no USAGE check.
			if sp.TempSchema != "" {
				add(sp.TempSchema)
			}
		default:
			if elem != "" && elem == sp.TempSchema {
				// Named as pg_temp_N: the session's own temporary schema,
				// which exists even if the snapshot predates it and which
				// the session may always use (pg_namespace_aclmask).
				add(elem)
			} else if _, ok := s.schemas[elem]; ok && s.hasUsage(elem, sp.User) {
				add(elem)
			}
		}
	}
	// Implicit schemas go in front, unchecked: first pg_catalog, then the
	// temporary schema before it.
	path := make([]string, 0, len(explicit)+2)
	if sp.TempSchema != "" && !slices.Contains(explicit, sp.TempSchema) {
		path = append(path, sp.TempSchema)
	}
	if !slices.Contains(explicit, "pg_catalog") {
		path = append(path, "pg_catalog")
	}
	return append(path, explicit...)
}

// Resolve returns the relation an unqualified name refers to under sp, or
// nil if there is none. name must already be an identifier as the parser
// produces it (dequoted and case-folded). The first schema in Path(sp)
// holding any relation called name wins; if that is an index, Resolve
// returns nil, since the server would fail on it rather than look further.
func (s *Snapshot) Resolve(sp SearchPath, name string) *Relation {
	for _, sch := range s.Path(sp) {
		n := Name{sch, name}
		if r := s.rels[n]; r != nil {
			return r
		}
		if _, ok := s.shadows[n]; ok {
			return nil
		}
	}
	return nil
}

// ResolveQualified returns the relation schema.name refers to under sp,
// or nil. An empty schema resolves name through the search path, like
// Resolve; the schema "pg_temp" means sp.TempSchema.
func (s *Snapshot) ResolveQualified(sp SearchPath, schema, name string) *Relation {
	switch schema {
	case "":
		return s.Resolve(sp, name)
	case "pg_temp":
		if sp.TempSchema == "" {
			return nil
		}
		schema = sp.TempSchema
	}
	return s.rels[Name{schema, name}]
}

// ResolveFunctions returns the candidates for an unqualified call of the
// function name under sp: every function called name in the schemas of
// Path(sp) except the temporary schema, which PostgreSQL never searches
// for functions, in path order and by OID within a schema. Choosing among
// overloads by argument types is left to the caller.
func (s *Snapshot) ResolveFunctions(sp SearchPath, name string) []*Function {
	var out []*Function
	for _, sch := range s.Path(sp) {
		if sch == sp.TempSchema {
			continue
		}
		out = append(out, s.funcs[Name{sch, name}]...)
	}
	return out
}

// hasUsage reports whether user holds USAGE on the schema called name, as
// object_aclcheck would decide it: superusers always do; others do if the
// schema grants USAGE to PUBLIC or to a role whose privileges user has.
func (s *Snapshot) hasUsage(name, user string) bool {
	if user == "" {
		return true
	}
	sch := s.schemas[name]
	if sch == nil {
		return false
	}
	if r := s.roles[user]; r != nil && r.Superuser {
		return true
	}
	privs := s.privs[user]
	for _, grantee := range sch.usage {
		if grantee == 0 {
			return true
		}
		if _, ok := slices.BinarySearch(privs, grantee); ok {
			return true
		}
	}
	return false
}

// namedatalen is NAMEDATALEN from src/include/pg_config_manual.h:
// identifiers are truncated to namedatalen-1 bytes.
const namedatalen = 64

// ParseSearchPath splits a search_path value such as `"$user", public`
// into identifiers the way PostgreSQL's SplitIdentifierString does:
// elements are separated by commas and optional whitespace; a
// double-quoted element keeps its case and may contain "" for a quote;
// an unquoted element is folded to lower case (ASCII letters only, as in
// a UTF-8 database); both are truncated to 63 bytes. An empty value is an
// empty path.
func ParseSearchPath(value string) ([]string, error) {
	var out []string
	i := 0
	skipSpace := func() {
		for i < len(value) && isSpace(value[i]) {
			i++
		}
	}
	skipSpace()
	if i == len(value) {
		return nil, nil
	}
	for {
		var ident string
		if value[i] == '"' {
			var b strings.Builder
			i++
			for {
				j := strings.IndexByte(value[i:], '"')
				if j < 0 {
					return nil, &SearchPathError{Value: value, Reason: "unterminated quoted identifier"}
				}
				b.WriteString(value[i : i+j])
				i += j + 1
				if i < len(value) && value[i] == '"' {
					b.WriteByte('"')
					i++
					continue
				}
				break
			}
			// An empty quoted element is accepted (and names no schema).
			ident = b.String()
		} else {
			start := i
			for i < len(value) && value[i] != ',' && !isSpace(value[i]) {
				i++
			}
			if i == start {
				return nil, &SearchPathError{Value: value, Reason: "empty element"}
			}
			ident = asciiLower(value[start:i])
		}
		out = append(out, truncateIdent(ident))
		skipSpace()
		if i == len(value) {
			return out, nil
		}
		if value[i] != ',' {
			return nil, &SearchPathError{Value: value, Reason: "expected a comma after an element"}
		}
		i++
		skipSpace()
		if i == len(value) {
			return nil, &SearchPathError{Value: value, Reason: "empty element"}
		}
	}
}

// SearchPathError is the error ParseSearchPath returns for a value
// PostgreSQL would reject.
type SearchPathError struct {
	Value  string
	Reason string
}

// Error implements error.
func (e *SearchPathError) Error() string {
	return "catalog: invalid search_path " + quoteLiteral(e.Value) + ": " + e.Reason
}

func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// isSpace is scanner_isspace from src/backend/parser/scansup.c.
func isSpace(b byte) bool {
	return b == ' ' || b == '\t' || b == '\n' || b == '\r' || b == '\f' || b == '\v'
}

func asciiLower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if b[j] >= 'A' && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// truncateIdent truncates s to namedatalen-1 bytes without splitting a
// UTF-8 character, like truncate_identifier with pg_mbcliplen.
func truncateIdent(s string) string {
	if len(s) < namedatalen {
		return s
	}
	n := namedatalen - 1
	for n > 0 && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}
