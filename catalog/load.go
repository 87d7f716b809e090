package catalog

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// MinServerVersion is the oldest server Load supports (server_version_num):
// PostgreSQL 11 introduced pg_proc.prokind.
const MinServerVersion = 110000

// firstNormalObjectID is FirstNormalObjectId from
// src/include/access/transam.h: OIDs below it belong to objects initdb
// created.
const firstNormalObjectID = 16384

// Queries Load runs. The first runs alone (its result chooses the
// membership query); the rest go to the server as one batch, in one round
// trip, inside the same REPEATABLE READ transaction.
const (
	// querySettings makes format_type schema-qualify every type outside
	// pg_catalog and quote only what needs quoting, whatever the
	// connection's settings, for the rest of the transaction.
	querySettings = `
SELECT pg_catalog.set_config('search_path', 'pg_catalog', true),
       pg_catalog.set_config('quote_all_identifiers', 'off', true)`

	queryInfo = `
SELECT current_database(), current_setting('server_version_num')::int4, d.datdba
FROM pg_catalog.pg_database d
WHERE d.datname = current_database()`

	// queryNamespaces lists every schema but the TOAST ones, with the
	// grantees holding USAGE (0 is PUBLIC); a NULL ACL means the default,
	// which grants the owner everything.
	queryNamespaces = `
SELECT n.oid, n.nspname, n.nspowner,
       ARRAY(SELECT a.grantee
             FROM pg_catalog.aclexplode(coalesce(n.nspacl, pg_catalog.acldefault('n', n.nspowner))) a
             WHERE a.privilege_type = 'USAGE')
FROM pg_catalog.pg_namespace n
WHERE n.nspname NOT LIKE 'pg\_toast%'`

	// queryClasses lists relations, and indexes, whose names matter for
	// name resolution.
	queryClasses = `
SELECT c.oid, c.relnamespace, c.relname, c.relkind, c.relowner, c.relispartition, c.reltype
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S', 'c', 'i', 'I')
  AND n.nspname NOT LIKE 'pg\_toast%'`

	// queryColumns lists user columns with their types and, for domains,
	// the base type under every level of domain with the innermost
	// domain's type modifier (getBaseTypeAndTypmod in lsyscache.c).
	queryColumns = `
WITH RECURSIVE dom(oid, base, typmod) AS (
    SELECT t.oid, t.typbasetype, t.typtypmod
    FROM pg_catalog.pg_type t
    WHERE t.typtype = 'd'
  UNION ALL
    SELECT dom.oid, t.typbasetype, t.typtypmod
    FROM dom JOIN pg_catalog.pg_type t ON t.oid = dom.base
    WHERE t.typtype = 'd'
), dombase AS (
    SELECT dom.oid, dom.base, dom.typmod
    FROM dom JOIN pg_catalog.pg_type b ON b.oid = dom.base
    WHERE b.typtype <> 'd'
)
SELECT a.attrelid, a.attname, a.attnum, a.atttypid,
       pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
       db.base, CASE WHEN db.oid IS NOT NULL THEN pg_catalog.format_type(db.base, db.typmod) END,
       coalesce(bt.typcategory, 'X')
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN dombase db ON db.oid = a.atttypid
LEFT JOIN pg_catalog.pg_type bt ON bt.oid = coalesce(db.base, a.atttypid)
WHERE a.attnum > 0 AND NOT a.attisdropped
  AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S', 'c')
  AND n.nspname NOT LIKE 'pg\_toast%'`

	queryInherits = `
SELECT i.inhrelid, i.inhparent, i.inhseqno
FROM pg_catalog.pg_inherits i`

	// queryViewDeps lists, for each view and materialized view, the
	// relations its _RETURN rule depends on: the relations its query
	// reads (and the columns of them, which DISTINCT folds).
	queryViewDeps = `
SELECT DISTINCT r.ev_class, d.refobjid
FROM pg_catalog.pg_rewrite r
JOIN pg_catalog.pg_depend d
  ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid
WHERE r.rulename = '_RETURN'
  AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
  AND d.refobjid <> r.ev_class`

	// queryFunctions reads functions and, as entries of kind 'o',
	// operators: both are resolved through search_path, and a
	// non-built-in operator is a non-built-in function behind a symbol.
	queryFunctions = `
SELECT p.oid, p.pronamespace, p.proname, p.prokind, p.prosecdef, l.lanname,
       p.proargtypes::pg_catalog.oid[], p.prorettype, p.proretset, p.provolatile
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
UNION ALL
SELECT o.oid, o.oprnamespace, o.oprname, 'o'::pg_catalog."char", false, 'operator',
       ARRAY[o.oprleft, o.oprright]::pg_catalog.oid[], o.oprresult, false, 'i'::pg_catalog."char"
FROM pg_catalog.pg_operator o`

	// queryForeignKeys reads foreign keys with their column names in key
	// order: writing a referencing row answers whether the referenced
	// value exists.
	queryForeignKeys = `
SELECT c.conrelid, c.confrelid,
       ARRAY(SELECT a.attname::pg_catalog.text
             FROM pg_catalog.unnest(c.conkey) WITH ORDINALITY AS k(n, i)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n
             ORDER BY k.i),
       ARRAY(SELECT a.attname::pg_catalog.text
             FROM pg_catalog.unnest(c.confkey) WITH ORDINALITY AS k(n, i)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n
             ORDER BY k.i)
FROM pg_catalog.pg_constraint c
WHERE c.contype = 'f'`

	// queryTypes11 reads every type with what its values are made of: a
	// domain's base type, an array's element type (typelem of a varlena
	// type; a fixed-length type's typelem is not an element type), a
	// composite type's relation, a range's subtype. queryTypes14 also
	// maps a multirange to its range (PostgreSQL 14 and later).
	queryTypes11 = `
SELECT t.oid, t.typnamespace, t.typname, t.typtype, t.typbasetype,
       CASE WHEN t.typlen = -1 THEN t.typelem ELSE 0 END, t.typrelid,
       coalesce(r.rngsubtype, 0)
FROM pg_catalog.pg_type t
LEFT JOIN pg_catalog.pg_range r ON r.rngtypid = t.oid`
	queryTypes14 = `
SELECT t.oid, t.typnamespace, t.typname, t.typtype, t.typbasetype,
       CASE WHEN t.typlen = -1 THEN t.typelem ELSE 0 END, t.typrelid,
       coalesce(r.rngsubtype, m.rngtypid, 0)
FROM pg_catalog.pg_type t
LEFT JOIN pg_catalog.pg_range r ON r.rngtypid = t.oid
LEFT JOIN pg_catalog.pg_range m ON m.rngmultitypid = t.oid`

	// queryCasts reads the casts whose function is not built in (OID at
	// or above FirstNormalObjectId): the server calls it to convert a
	// value, explicitly (x::t) or, by castcontext, implicitly.
	queryCasts = `
SELECT c.castsource, c.casttarget, n.nspname, p.proname, c.castcontext
FROM pg_catalog.pg_cast c
JOIN pg_catalog.pg_proc p ON p.oid = c.castfunc
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE c.castfunc >= 16384`

	// queryDomainChecks reads, per domain, a function or operator that
	// is not built in and that one of its constraints depends on (a
	// constraint's expression records a dependency on every function and
	// operator it calls, pinned built-ins aside): a cast to the domain
	// runs it.
	queryDomainChecks = `
SELECT DISTINCT ON (c.contypid) c.contypid,
       coalesce((SELECT n.nspname || '.' || p.proname FROM pg_catalog.pg_proc p
                 JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE p.oid = d.refobjid),
                (SELECT n.nspname || '.' || o.oprname FROM pg_catalog.pg_operator o
                 JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace WHERE o.oid = d.refobjid), '?')
FROM pg_catalog.pg_constraint c
JOIN pg_catalog.pg_depend d
  ON d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass AND d.objid = c.oid
WHERE c.contypid <> 0
  AND d.refclassid IN ('pg_catalog.pg_proc'::pg_catalog.regclass, 'pg_catalog.pg_operator'::pg_catalog.regclass)
  AND d.refobjid >= 16384
ORDER BY c.contypid, d.refobjid`

	// queryWriteConstraints reads the constraints a write is checked
	// against besides foreign keys: CHECK constraints with the columns
	// they mention, and unique and exclusion indexes with every column
	// their keys, key expressions and partial-index predicates use (the
	// expressions' and predicate's columns are their pg_depend entries; a
	// whole-row reference, refobjsubid 0, uses every column).
	queryWriteConstraints = `
SELECT c.conrelid, 'c'::pg_catalog."char",
       ARRAY(SELECT a.attname::pg_catalog.text FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey) ORDER BY a.attnum),
       c.convalidated
FROM pg_catalog.pg_constraint c
WHERE c.contype = 'c' AND c.conrelid <> 0
UNION ALL
SELECT i.indrelid, CASE WHEN i.indisexclusion THEN 'x' ELSE 'u' END::pg_catalog."char",
       ARRAY(SELECT a.attname::pg_catalog.text FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = i.indrelid AND a.attnum > 0 AND NOT a.attisdropped
               AND (a.attnum = ANY (i.indkey::pg_catalog.int2[])
                    OR EXISTS (SELECT FROM pg_catalog.pg_depend d
                               WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = i.indexrelid
                                 AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = i.indrelid
                                 AND d.refobjsubid IN (0, a.attnum)))
             ORDER BY a.attnum),
       true
FROM pg_catalog.pg_index i
WHERE i.indisunique OR i.indisexclusion`

	queryRoles = `
SELECT r.oid, r.rolname, r.rolsuper, r.rolbypassrls, r.rolinherit, r.rolcanlogin
FROM pg_catalog.pg_roles r`

	// queryMembers16 reads membership grants on PostgreSQL 16 and later,
	// where each grant says whether it passes on privileges.
	queryMembers16 = `
SELECT m.roleid, m.member, m.inherit_option
FROM pg_catalog.pg_auth_members m`

	// queryMembers11 reads membership grants before PostgreSQL 16, where
	// the member role's rolinherit decides for all of its grants.
	queryMembers11 = `
SELECT m.roleid, m.member, r.rolinherit
FROM pg_catalog.pg_auth_members m
JOIN pg_catalog.pg_roles r ON r.oid = m.member`
)

// rawData is what Load reads, before build indexes it.
type rawData struct {
	database      string
	serverVersion int
	dbOwner       uint32
	namespaces    []rawNamespace
	classes       []rawClass
	columns       []rawColumn
	inherits      []rawInherit
	viewDeps      []rawDep
	functions     []rawFunction
	foreignKeys   []rawForeignKey
	types         []rawType
	casts         []rawCast
	domainChecks  []rawDomainCheck
	constraints   []rawConstraint
	roles         []rawRole
	members       []rawMember
}

type rawNamespace struct {
	oid, owner uint32
	name       string
	usage      []uint32
}

type rawClass struct {
	oid, namespace, owner uint32
	name                  string
	kind                  byte
	isPartition           bool
	rowType               uint32
}

type rawColumn struct {
	rel uint32
	col Column
}

type rawInherit struct {
	child, parent uint32
	seq           int32
}

type rawForeignKey struct {
	rel, ref      uint32
	cols, refCols []string
}

type rawType struct {
	namespace uint32
	typ       Type
}

type rawCast struct {
	source, target     uint32
	funcSchema, fnName string
	context            byte
}

type rawConstraint struct {
	rel uint32
	con Constraint
}

type rawDomainCheck struct {
	domain uint32
	fn     string
}

type rawDep struct {
	view, ref uint32
}

type rawFunction struct {
	namespace uint32
	fn        Function
}

type rawRole struct {
	oid                              uint32
	name                             string
	super, bypassRLS, inherit, login bool
}

type rawMember struct {
	role, member uint32
	inherit      bool
}

// QueryCount is how many queries Load sends, whatever the size of the
// database: the server information first, then the rest in one batch.
const QueryCount = 15

// Load reads a Snapshot of the database conn is connected to, in a single
// REPEATABLE READ, READ ONLY transaction, so every part of it reflects the
// same moment. It runs QueryCount set-based queries, all but the first
// sent as one batch, however large the database (plus BEGIN and
// ROLLBACK). conn must be idle and not in a transaction; Load leaves it
// that way unless it fails. The result's Version is 0.
//
// The snapshot includes pg_catalog and information_schema, so that
// unqualified names such as pg_stats resolve as the server would resolve
// them, and the temporary schemas of other sessions as they stood.
// PostgreSQL records no dependencies on pinned objects (the system catalogs
// themselves, such as pg_class and pg_statistic; see the pg_depend
// documentation), so the Reads of system views leave those out.
func Load(ctx context.Context, conn *pgx.Conn) (*Snapshot, error) {
	// BEGIN inside a transaction would only warn, and Load's ROLLBACK would
	// then end the caller's transaction.
	if st := conn.PgConn().TxStatus(); st != 'I' {
		return nil, fmt.Errorf("catalog: load needs an idle connection, not one in transaction status %q", st)
	}
	loadedAt := time.Now()
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("catalog: begin: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }()

	raw, err := read(ctx, tx)
	if err != nil {
		return nil, err
	}
	if err := tx.Rollback(ctx); err != nil {
		return nil, fmt.Errorf("catalog: end transaction: %w", err)
	}
	s := build(raw)
	s.LoadedAt = loadedAt
	return s, nil
}

// read runs the queries in tx.
func read(ctx context.Context, tx pgx.Tx) (*rawData, error) {
	raw := &rawData{}
	if err := tx.QueryRow(ctx, queryInfo).Scan(&raw.database, &raw.serverVersion, &raw.dbOwner); err != nil {
		return nil, fmt.Errorf("catalog: read server information: %w", err)
	}
	if raw.serverVersion < MinServerVersion {
		return nil, fmt.Errorf("catalog: server version %d is older than the oldest supported, %d",
			raw.serverVersion, MinServerVersion)
	}
	queryMembers := queryMembers11
	if raw.serverVersion >= 160000 {
		queryMembers = queryMembers16
	}
	queryTypes := queryTypes11
	if raw.serverVersion >= 140000 {
		queryTypes = queryTypes14
	}

	type step struct {
		what  string
		query string
		read  func(pgx.Rows) error
	}
	steps := []step{
		{"settings", querySettings, func(rows pgx.Rows) error {
			var a, b string
			return forEach(rows, func() {}, &a, &b)
		}},
		{"schemas", queryNamespaces, func(rows pgx.Rows) error {
			var r rawNamespace
			return forEach(rows, func() {
				raw.namespaces = append(raw.namespaces, r)
				r.usage = nil // the next row scans into a fresh slice
			}, &r.oid, &r.name, &r.owner, &r.usage)
		}},
		{"relations", queryClasses, func(rows pgx.Rows) error {
			var r rawClass
			return forEach(rows, func() { raw.classes = append(raw.classes, r) },
				&r.oid, &r.namespace, &r.name, &r.kind, &r.owner, &r.isPartition, &r.rowType)
		}},
		{"columns", queryColumns, func(rows pgx.Rows) error {
			var r rawColumn
			var base *uint32
			var baseType *string
			return forEach(rows, func() {
				r.col.BaseTypeOID, r.col.BaseType = r.col.TypeOID, r.col.Type
				if base != nil && baseType != nil {
					r.col.BaseTypeOID, r.col.BaseType = *base, *baseType
				}
				raw.columns = append(raw.columns, r)
			}, &r.rel, &r.col.Name, &r.col.Num, &r.col.TypeOID, &r.col.Type, &r.col.NotNull,
				&base, &baseType, &r.col.Category)
		}},
		{"inheritance", queryInherits, func(rows pgx.Rows) error {
			var r rawInherit
			return forEach(rows, func() { raw.inherits = append(raw.inherits, r) },
				&r.child, &r.parent, &r.seq)
		}},
		{"view dependencies", queryViewDeps, func(rows pgx.Rows) error {
			var r rawDep
			return forEach(rows, func() { raw.viewDeps = append(raw.viewDeps, r) },
				&r.view, &r.ref)
		}},
		{"functions", queryFunctions, func(rows pgx.Rows) error {
			var r rawFunction
			return forEach(rows, func() {
				r.fn.Builtin = r.fn.OID < firstNormalObjectID
				raw.functions = append(raw.functions, r)
				r.fn.ArgTypes = nil // the next row scans into a fresh slice
			}, &r.fn.OID, &r.namespace, &r.fn.Name.Name, &r.fn.Kind, &r.fn.SecurityDefiner,
				&r.fn.Language, &r.fn.ArgTypes, &r.fn.ReturnType, &r.fn.ReturnsSet, &r.fn.Volatility)
		}},
		{"foreign keys", queryForeignKeys, func(rows pgx.Rows) error {
			var r rawForeignKey
			return forEach(rows, func() {
				raw.foreignKeys = append(raw.foreignKeys, r)
				r.cols, r.refCols = nil, nil // the next row scans into fresh slices
			}, &r.rel, &r.ref, &r.cols, &r.refCols)
		}},
		{"types", queryTypes, func(rows pgx.Rows) error {
			var r rawType
			return forEach(rows, func() {
				r.typ.Builtin = r.typ.OID < firstNormalObjectID
				raw.types = append(raw.types, r)
			}, &r.typ.OID, &r.namespace, &r.typ.Name.Name, &r.typ.Kind, &r.typ.Base, &r.typ.Elem,
				&r.typ.Relation, &r.typ.RangeOf)
		}},
		{"casts", queryCasts, func(rows pgx.Rows) error {
			var r rawCast
			return forEach(rows, func() { raw.casts = append(raw.casts, r) },
				&r.source, &r.target, &r.funcSchema, &r.fnName, &r.context)
		}},
		{"domain constraints", queryDomainChecks, func(rows pgx.Rows) error {
			var r rawDomainCheck
			return forEach(rows, func() { raw.domainChecks = append(raw.domainChecks, r) },
				&r.domain, &r.fn)
		}},
		{"write constraints", queryWriteConstraints, func(rows pgx.Rows) error {
			var r rawConstraint
			return forEach(rows, func() {
				raw.constraints = append(raw.constraints, r)
				r.con.Columns = nil // the next row scans into a fresh slice
			}, &r.rel, &r.con.Kind, &r.con.Columns, &r.con.Validated)
		}},
		{"roles", queryRoles, func(rows pgx.Rows) error {
			var r rawRole
			return forEach(rows, func() { raw.roles = append(raw.roles, r) },
				&r.oid, &r.name, &r.super, &r.bypassRLS, &r.inherit, &r.login)
		}},
		{"role memberships", queryMembers, func(rows pgx.Rows) error {
			var r rawMember
			return forEach(rows, func() { raw.members = append(raw.members, r) },
				&r.role, &r.member, &r.inherit)
		}},
	}

	batch := &pgx.Batch{}
	for _, st := range steps {
		batch.Queue(st.query)
	}
	results := tx.SendBatch(ctx, batch)
	for _, st := range steps {
		rows, err := results.Query()
		if err == nil {
			err = st.read(rows)
		}
		if err != nil {
			_ = results.Close()
			return nil, fmt.Errorf("catalog: read %s: %w", st.what, err)
		}
	}
	if err := results.Close(); err != nil {
		return nil, fmt.Errorf("catalog: read: %w", err)
	}
	return raw, nil
}

// forEach scans every row of rows into dest and calls fn after each, then
// closes rows.
func forEach(rows pgx.Rows, fn func(), dest ...any) error {
	defer rows.Close()
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return err
		}
		fn()
	}
	return rows.Err()
}

// build indexes raw into a Snapshot.
func build(raw *rawData) *Snapshot {
	s := &Snapshot{
		Database:      raw.database,
		ServerVersion: raw.serverVersion,
		schemas:       make(map[string]*schema, len(raw.namespaces)),
		rels:          make(map[Name]*Relation, len(raw.classes)),
		relsByOID:     make(map[uint32]*Relation, len(raw.classes)),
		shadows:       make(map[Name]struct{}),
		children:      make(map[Name][]Name),
		dependents:    make(map[Name][]Name),
		funcs:         make(map[Name][]*Function),
		funcsNamed:    make(map[string][]*Function),
	}
	roleNames := buildRoles(s, raw)
	s.DatabaseOwner = roleNames[raw.dbOwner]

	nsNames := make(map[uint32]string, len(raw.namespaces))
	for _, n := range raw.namespaces {
		nsNames[n.oid] = n.name
		usage := slices.Clone(n.usage)
		slices.Sort(usage)
		s.schemas[n.name] = &schema{oid: n.oid, name: n.name, owner: roleNames[n.owner], usage: usage}
		s.schemaNames = append(s.schemaNames, n.name)
	}
	slices.Sort(s.schemaNames)

	buildRelations(s, raw, nsNames, roleNames)
	buildInheritance(s, raw)
	buildViewReads(s, raw)
	buildFunctions(s, raw, nsNames)
	buildTypes(s, raw, nsNames)
	for _, c := range raw.constraints {
		if rel := s.relsByOID[c.rel]; rel != nil {
			rel.Constraints = append(rel.Constraints, c.con)
		}
	}
	for _, fk := range raw.foreignKeys {
		rel, ref := s.relsByOID[fk.rel], s.relsByOID[fk.ref]
		if rel != nil && ref != nil {
			rel.ForeignKeys = append(rel.ForeignKeys, ForeignKey{Columns: fk.cols, References: ref.Name, RefColumns: fk.refCols})
		}
	}
	return s
}

// buildRelations fills in relations and their columns, and the names
// taken by indexes.
func buildRelations(s *Snapshot, raw *rawData, nsNames map[uint32]string, roleNames map[uint32]string) {
	rels := make([]Relation, 0, len(raw.classes))
	for _, c := range raw.classes {
		ns, ok := nsNames[c.namespace]
		if !ok {
			continue
		}
		n := Name{ns, c.name}
		if c.kind == 'i' || c.kind == 'I' {
			s.shadows[n] = struct{}{}
			continue
		}
		rels = append(rels, Relation{OID: c.oid, Name: n, Kind: RelKind(c.kind), Owner: roleNames[c.owner], RowType: c.rowType})
	}
	s.relList = make([]*Relation, len(rels))
	for i := range rels {
		r := &rels[i]
		s.rels[r.Name] = r
		s.relsByOID[r.OID] = r
		s.relList[i] = r
	}
	slices.SortFunc(s.relList, func(a, b *Relation) int { return compareNames(a.Name, b.Name) })

	cols := raw.columns
	slices.SortFunc(cols, func(a, b rawColumn) int {
		return cmp.Or(cmp.Compare(a.rel, b.rel), cmp.Compare(a.col.Num, b.col.Num))
	})
	flat := make([]Column, len(cols))
	for i := range cols {
		flat[i] = cols[i].col
	}
	for i := 0; i < len(cols); {
		j := i + 1
		for j < len(cols) && cols[j].rel == cols[i].rel {
			j++
		}
		if r := s.relsByOID[cols[i].rel]; r != nil {
			r.Columns = flat[i:j:j]
		}
		i = j
	}
}

// buildInheritance links partitions to their parent and inheritance
// children to their parents.
func buildInheritance(s *Snapshot, raw *rawData) {
	isPartition := make(map[uint32]bool)
	for _, c := range raw.classes {
		if c.isPartition {
			isPartition[c.oid] = true
		}
	}
	inh := slices.Clone(raw.inherits)
	slices.SortFunc(inh, func(a, b rawInherit) int {
		return cmp.Or(cmp.Compare(a.child, b.child), cmp.Compare(a.seq, b.seq))
	})
	for _, e := range inh {
		child, parent := s.relsByOID[e.child], s.relsByOID[e.parent]
		if child == nil || parent == nil {
			continue // partitioned indexes, or objects filtered out
		}
		if isPartition[e.child] {
			child.Parent = parent.Name
		} else {
			child.Inherits = append(child.Inherits, parent.Name)
		}
		s.children[parent.Name] = append(s.children[parent.Name], child.Name)
	}
	for n, c := range s.children {
		slices.SortFunc(c, compareNames)
		s.children[n] = slices.Compact(c)
	}
}

// buildViewReads computes each view's Reads, transitively through other
// views and materialized views, and the reverse index behind Dependents.
func buildViewReads(s *Snapshot, raw *rawData) {
	direct := make(map[uint32][]uint32)
	for _, d := range raw.viewDeps {
		if s.relsByOID[d.view] == nil || s.relsByOID[d.ref] == nil {
			continue
		}
		direct[d.view] = append(direct[d.view], d.ref)
	}
	const (
		unvisited = iota
		inProgress
		done
	)
	state := make(map[uint32]int, len(direct))
	closure := make(map[uint32]map[uint32]struct{}, len(direct))
	var visit func(v uint32) map[uint32]struct{}
	visit = func(v uint32) map[uint32]struct{} {
		switch state[v] {
		case done:
			return closure[v]
		case inProgress:
			return nil // a cycle, which PostgreSQL does not allow anyway
		}
		state[v] = inProgress
		set := make(map[uint32]struct{})
		for _, ref := range direct[v] {
			set[ref] = struct{}{}
			for r := range visit(ref) {
				set[r] = struct{}{}
			}
		}
		delete(set, v)
		state[v] = done
		closure[v] = set
		return set
	}
	for v := range direct {
		set := visit(v)
		rel := s.relsByOID[v]
		rel.Reads = make([]Name, 0, len(set))
		for ref := range set {
			rn := s.relsByOID[ref].Name
			rel.Reads = append(rel.Reads, rn)
			s.dependents[rn] = append(s.dependents[rn], rel.Name)
		}
		slices.SortFunc(rel.Reads, compareNames)
	}
	for _, d := range s.dependents {
		slices.SortFunc(d, compareNames)
	}
}

// buildFunctions indexes functions by qualified and bare name.
func buildFunctions(s *Snapshot, raw *rawData, nsNames map[uint32]string) {
	fns := make([]Function, 0, len(raw.functions))
	for _, f := range raw.functions {
		ns, ok := nsNames[f.namespace]
		if !ok {
			continue
		}
		fn := f.fn
		fn.Name.Schema = ns
		fns = append(fns, fn)
	}
	slices.SortFunc(fns, func(a, b Function) int {
		return cmp.Or(compareNames(a.Name, b.Name), cmp.Compare(a.OID, b.OID))
	})
	for i := range fns {
		f := &fns[i]
		s.funcs[f.Name] = append(s.funcs[f.Name], f)
		s.funcsNamed[f.Name.Name] = append(s.funcsNamed[f.Name.Name], f)
	}
}

// pgDatabaseOwner is the predefined role every database's owner is
// implicitly a member of (PostgreSQL 14 and later).
const pgDatabaseOwner = "pg_database_owner"

// buildRoles fills in roles, their transitive memberships and the roles
// whose privileges each has, and returns role names by OID.
func buildRoles(s *Snapshot, raw *rawData) map[uint32]string {
	names := make(map[uint32]string, len(raw.roles))
	byOID := make(map[uint32]*Role, len(raw.roles))
	s.roles = make(map[string]*Role, len(raw.roles))
	s.privs = make(map[string][]uint32, len(raw.roles))
	roles := make([]Role, len(raw.roles))
	var dbOwnerRole uint32
	for i, r := range raw.roles {
		roles[i] = Role{Name: r.name, OID: r.oid, Superuser: r.super, BypassRLS: r.bypassRLS,
			Inherit: r.inherit, CanLogin: r.login}
		names[r.oid] = r.name
		byOID[r.oid] = &roles[i]
		s.roles[r.name] = &roles[i]
		if r.name == pgDatabaseOwner {
			dbOwnerRole = r.oid
		}
	}

	// edges maps a member to the roles it was granted.
	type edge struct {
		role    uint32
		inherit bool
	}
	edges := make(map[uint32][]edge)
	for _, m := range raw.members {
		edges[m.member] = append(edges[m.member], edge{m.role, m.inherit})
	}
	if owner := byOID[raw.dbOwner]; owner != nil && dbOwnerRole != 0 {
		// Before PostgreSQL 16 the owner's rolinherit governs this implicit
		// grant like its others; from 16 on it always inherits
		// (roles_is_member_of in src/backend/utils/adt/acl.c).
		inherit := owner.Inherit || raw.serverVersion >= 160000
		edges[raw.dbOwner] = append(edges[raw.dbOwner], edge{dbOwnerRole, inherit})
	}

	// closure returns start and every role reachable from it, following
	// only inheriting grants if inheritOnly.
	closure := func(start uint32, inheritOnly bool) []uint32 {
		seen := map[uint32]bool{start: true}
		out := []uint32{start}
		for i := 0; i < len(out); i++ {
			for _, e := range edges[out[i]] {
				if seen[e.role] || (inheritOnly && !e.inherit) {
					continue
				}
				seen[e.role] = true
				out = append(out, e.role)
			}
		}
		return out
	}
	for i := range roles {
		r := &roles[i]
		for _, oid := range closure(r.OID, false)[1:] {
			if name, ok := names[oid]; ok {
				r.MemberOf = append(r.MemberOf, name)
			}
		}
		slices.Sort(r.MemberOf)
		privs := closure(r.OID, true)
		slices.Sort(privs)
		s.privs[r.Name] = privs
	}
	return names
}

// buildTypes indexes types by OID and name, marks the domains whose
// constraints call user code, and keeps the casts whose function is not
// built in.
func buildTypes(s *Snapshot, raw *rawData, nsNames map[uint32]string) {
	s.types = make(map[uint32]*Type, len(raw.types))
	s.typesByName = make(map[Name]*Type, len(raw.types))
	types := make([]Type, 0, len(raw.types))
	for _, r := range raw.types {
		ns, ok := nsNames[r.namespace]
		if !ok {
			continue
		}
		t := r.typ
		t.Name.Schema = ns
		types = append(types, t)
	}
	for i := range types {
		t := &types[i]
		s.types[t.OID] = t
		s.typesByName[t.Name] = t
	}
	for _, d := range raw.domainChecks {
		if t := s.types[d.domain]; t != nil {
			t.UserChecks = d.fn
		}
	}
	for _, c := range raw.casts {
		s.casts = append(s.casts, Cast{Source: c.source, Target: c.target,
			Func: Name{c.funcSchema, c.fnName}, Context: CastContext(c.context)})
	}
	slices.SortFunc(s.casts, func(a, b Cast) int {
		return cmp.Or(cmp.Compare(a.Source, b.Source), cmp.Compare(a.Target, b.Target))
	})
}
