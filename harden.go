package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"

	"github.com/spf13/pflag"

	"github.com/pgveil/pgveil/catalog"
	"github.com/pgveil/pgveil/rewrite"
	"github.com/pgveil/pgveil/rules"
)

// publicFunctions run SQL given as text or read large objects. PostgreSQL
// lets PUBLIC execute them (their proacl is NULL after initdb, PostgreSQL
// 11 to 17), so harden revokes them from PUBLIC and grants them back to
// the roles that see everything raw. The signatures are those of
// PostgreSQL 15 (\df in psql); the DO block harden prints after them also
// catches overloads other versions add.
var publicFunctions = []string{
	"query_to_xml(text, boolean, boolean, text)",
	"query_to_xmlschema(text, boolean, boolean, text)",
	"query_to_xml_and_xmlschema(text, boolean, boolean, text)",
	"cursor_to_xml(refcursor, integer, boolean, boolean, text)",
	"cursor_to_xmlschema(refcursor, boolean, boolean, text)",
	"table_to_xml(regclass, boolean, boolean, text)",
	"table_to_xmlschema(regclass, boolean, boolean, text)",
	"table_to_xml_and_xmlschema(regclass, boolean, boolean, text)",
	"schema_to_xml(name, boolean, boolean, text)",
	"schema_to_xmlschema(name, boolean, boolean, text)",
	"schema_to_xml_and_xmlschema(name, boolean, boolean, text)",
	"database_to_xml(boolean, boolean, text)",
	"database_to_xmlschema(boolean, boolean, text)",
	"database_to_xml_and_xmlschema(boolean, boolean, text)",
	"ts_stat(text)",
	"ts_stat(text, text)",
	"ts_rewrite(tsquery, text)",
	"lo_open(oid, integer)",
	"lo_close(integer)",
	"loread(integer, integer)",
	"lowrite(integer, bytea)",
	"lo_lseek(integer, integer, integer)",
	"lo_lseek64(integer, bigint, integer)",
	"lo_tell(integer)",
	"lo_tell64(integer)",
	"lo_truncate(integer, integer)",
	"lo_truncate64(integer, bigint)",
	"lo_creat(integer)",
	"lo_create(oid)",
	"lo_unlink(oid)",
	"lo_from_bytea(oid, bytea)",
	"lo_get(oid)",
	"lo_get(oid, bigint, integer)",
	"lo_put(oid, bigint, bytea)",
}

// serverFileFunctions read server files or move large objects to and from
// them. initdb already keeps them from PUBLIC (only superusers, and roles
// they are granted to, may run them); harden revokes them again from
// PUBLIC and from every masked role, in case someone granted them, and
// never grants them back.
var serverFileFunctions = []string{
	"pg_read_file(text)",
	"pg_read_file(text, bigint, bigint)",
	"pg_read_file(text, bigint, bigint, boolean)",
	"pg_read_binary_file(text)",
	"pg_read_binary_file(text, bigint, bigint)",
	"pg_read_binary_file(text, bigint, bigint, boolean)",
	"pg_stat_file(text)",
	"pg_stat_file(text, boolean)",
	"pg_ls_dir(text)",
	"pg_ls_dir(text, boolean, boolean)",
	"lo_import(text)",
	"lo_import(text, oid)",
	"lo_export(oid, text)",
}

// funcName is the name of a signature such as "lo_get(oid)".
func funcName(sig string) string { return sig[:strings.IndexByte(sig, '(')] }

func runHarden(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("harden", pflag.ContinueOnError)
	policyFile := fs.String("policy", "", "policy file (YAML) (required)")
	upstream := fs.String("upstream", "", "read the live schema, roles and privileges of this database as the proxy's own account (postgres://pgveil:secret@host:5432/db); without it, column grants are printed as a commented template")
	proxyAddr := fs.String("proxy-address", "", "address or CIDR the proxy connects from, for the suggested pg_hba.conf lines (e.g. 10.0.0.5 or 10.0.0.0/24)")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	hba := "PROXY_ADDRESS/32"
	if *proxyAddr != "" {
		p, err := parseHBAAddress(*proxyAddr)
		if err != nil {
			return usagef("invalid --proxy-address %q: want an IP address or CIDR", *proxyAddr)
		}
		hba = p
	}
	pol, err := loadPolicy(*policyFile, stderr)
	if err != nil {
		return err
	}
	h := &hardener{pol: pol, hba: hba}
	if *upstream != "" {
		up, err := connectUpstream(ctx, *upstream)
		if err != nil {
			return err
		}
		defer up.close()
		h.up = up
		if err := h.readLive(ctx); err != nil {
			return err
		}
	} else {
		h.readPolicyOnly()
	}
	h.write()
	_, err = io.WriteString(stdout, h.b.String())
	return err
}

// parseHBAAddress turns an address or CIDR into pg_hba.conf's form.
func parseHBAAddress(s string) (string, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.String(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return "", err
	}
	return netip.PrefixFrom(a, a.BitLen()).String(), nil
}

// hardener computes and prints the defence-in-depth SQL of DESIGN.md §2
// rule 8 for one policy, optionally against a live database.
type hardener struct {
	pol *rules.Policy
	up  *upstreamDB // nil without --upstream
	hba string

	// masked are the roles some of whose sessions' data the proxy masks
	// or filters, sorted; grants holds their effective grants.
	masked []string
	grants map[string]*rules.Grants
	// raw are the roles that see everything raw; they get TEMPORARY and
	// EXECUTE back after the revokes from PUBLIC.
	raw []string
	// notes are comment lines about roles harden leaves alone.
	notes []string
	// acls are the SELECT privileges on the relations of interest, by OID
	// (live only).
	acls map[uint32]relACL
	// secdef lists SECURITY DEFINER functions outside the system schemas
	// (live only).
	secdef []string

	b strings.Builder
}

// relACL maps a grantee ("" for PUBLIC) to its SELECT privileges on one
// relation.
type relACL map[string]*selectGrant

// selectGrant is a grantee's SELECT privilege on a relation: on the whole
// table, or on some of its columns.
type selectGrant struct {
	table bool
	cols  map[string]bool
}

// readPolicyOnly classifies the policy's roles without a database: a role
// is judged by its own grant alone (memberships are unknown).
func (h *hardener) readPolicyOnly() {
	h.grants = map[string]*rules.Grants{}
	for _, name := range policyRoleNames(h.pol) {
		g, err := h.pol.Grants([]string{name})
		if err != nil {
			continue
		}
		if g.AllRaw() {
			h.raw = append(h.raw, name)
		} else {
			h.masked = append(h.masked, name)
			h.grants[name] = g
		}
	}
}

// policyRoleNames returns the roles the policy names under roles: and in
// row filters, sorted.
func policyRoleNames(pol *rules.Policy) []string {
	names := sortedKeys(pol.Roles)
	for _, f := range pol.RowFilters {
		names = append(names, f.Roles...)
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// readLive classifies the database's roles by their effective grants
// (their own and those of every role they are members of), and reads the
// SELECT privileges of the relations to harden.
func (h *hardener) readLive(ctx context.Context) error {
	snap := h.up.snap
	logins, err := h.up.loginRoles(ctx)
	if err != nil {
		return err
	}
	h.grants = map[string]*rules.Grants{}
	candidates := append(policyRoleNames(h.pol), logins...)
	slices.Sort(candidates)
	for _, name := range slices.Compact(candidates) {
		r := snap.Role(name)
		switch {
		case r == nil:
			h.notes = append(h.notes, fmt.Sprintf("role %s is in the policy but not in the database: skipped", name))
			continue
		case name == h.up.account:
			h.notes = append(h.notes, fmt.Sprintf("role %s is pgveil's own account (--upstream): it reads only the system catalogs; left alone", name))
			continue
		case r.Superuser:
			h.notes = append(h.notes, fmt.Sprintf("role %s is a superuser: the database does not restrict superusers, so nothing here applies to it; connect as a non-superuser role through the proxy", name))
			continue
		}
		g, err := h.pol.Grants(snap.RolesOf(name))
		switch {
		case err != nil:
			// unknown_roles: reject: the proxy refuses it, so it is not a
			// masked session; it keeps what it has.
			h.raw = append(h.raw, name)
		case g.AllRaw():
			h.raw = append(h.raw, name)
		default:
			h.masked = append(h.masked, name)
			h.grants[name] = g
		}
	}

	var oids []int64
	for _, rel := range h.liveRelations() {
		oids = append(oids, int64(rel.OID))
	}
	if h.acls, err = h.up.selectACLs(ctx, oids); err != nil {
		return err
	}
	rows, err := h.up.conn.Query(ctx, `
SELECT p.oid::pg_catalog.regprocedure::text
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE p.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1`)
	if err != nil {
		return fmt.Errorf("upstream: list functions: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return fmt.Errorf("upstream: list functions: %w", err)
		}
		h.secdef = append(h.secdef, s)
	}
	return rows.Err()
}

// selectACLs reads who holds SELECT on each relation, at table and column
// level, from pg_class.relacl and pg_attribute.attacl (a NULL relacl
// means the owner's default privileges).
func (u *upstreamDB) selectACLs(ctx context.Context, oids []int64) (map[uint32]relACL, error) {
	rows, err := u.conn.Query(ctx, `
SELECT c.oid::int8, r.rolname, NULL::name
FROM pg_catalog.pg_class c
CROSS JOIN LATERAL pg_catalog.aclexplode(COALESCE(c.relacl, pg_catalog.acldefault('r', c.relowner))) a
LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
WHERE c.oid::int8 = ANY ($1::int8[]) AND a.privilege_type = 'SELECT'
UNION ALL
SELECT t.attrelid::int8, r.rolname, t.attname
FROM pg_catalog.pg_attribute t
CROSS JOIN LATERAL pg_catalog.aclexplode(t.attacl) a
LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
WHERE t.attrelid::int8 = ANY ($1::int8[]) AND t.attnum > 0 AND NOT t.attisdropped
  AND t.attacl IS NOT NULL AND a.privilege_type = 'SELECT'`, oids)
	if err != nil {
		return nil, fmt.Errorf("upstream: read privileges: %w", err)
	}
	defer rows.Close()
	out := map[uint32]relACL{}
	for rows.Next() {
		var oid int64
		var grantee, col *string
		if err := rows.Scan(&oid, &grantee, &col); err != nil {
			return nil, fmt.Errorf("upstream: read privileges: %w", err)
		}
		acl := out[uint32(oid)]
		if acl == nil {
			acl = relACL{}
			out[uint32(oid)] = acl
		}
		name := ""
		if grantee != nil {
			name = *grantee
		}
		g := acl[name]
		if g == nil {
			g = &selectGrant{cols: map[string]bool{}}
			acl[name] = g
		}
		if col == nil {
			g.table = true
		} else {
			g.cols[*col] = true
		}
	}
	return out, rows.Err()
}

// liveRelations are the relations whose column grants matter: those the
// policy classifies, their partitions and inheritance children, the tables
// above them, and the views over any of them. Sorted by name.
func (h *hardener) liveRelations() []*catalog.Relation {
	snap := h.up.snap
	set := protectedRelations(h.pol, snap)
	for n := range classifiedRelations(h.pol) {
		if snap.Relation(n) != nil {
			set[n] = true // classified views too
		}
	}
	for _, n := range sortedNames(set) {
		for _, v := range snap.Dependents(n) {
			set[v] = true
		}
	}
	var out []*catalog.Relation
	for _, n := range sortedNames(set) {
		if rel := snap.Relation(n); rel != nil {
			out = append(out, rel)
		}
	}
	return out
}

// deniedFor reports whether a session with grants g sees rule r's column
// as deny: the proxy never reads such a column (it projects NULL).
func deniedFor(g *rules.Grants, r *rules.ColumnRule) bool {
	return r != nil && r.Class.Mask.Kind == rules.MaskDeny && g.ColumnTreatment(r) == rules.TreatMask
}

// write prints the whole script.
func (h *hardener) write() {
	h.header()
	if len(h.masked) == 0 {
		h.line("-- No role sees any class masked, so there is nothing to harden.")
		return
	}
	h.line("BEGIN;")
	h.temporary()
	h.functions()
	h.columnGrants()
	h.views()
	h.searchPath()
	h.rowFilters()
	h.securityDefiners()
	h.line("")
	h.line("COMMIT;")
	h.hbaSnippet()
}

// line prints one line of output.
func (h *hardener) line(s string) {
	h.b.WriteString(s)
	h.b.WriteByte('\n')
}

// linef prints one formatted line of output.
func (h *hardener) linef(format string, args ...any) {
	h.line(fmt.Sprintf(format, args...))
}

// comment prints text as "-- " lines wrapped at about 78 columns.
func (h *hardener) comment(text string) {
	const width = 76
	var cur strings.Builder
	for _, w := range strings.Fields(text) {
		if cur.Len() > 0 && cur.Len()+1+len(w) > width {
			h.line("-- " + cur.String())
			cur.Reset()
		}
		if cur.Len() > 0 {
			cur.WriteByte(' ')
		}
		cur.WriteString(w)
	}
	if cur.Len() > 0 {
		h.line("-- " + cur.String())
	}
}

func (h *hardener) section(title string) {
	h.line("")
	h.line("-- " + strings.Repeat("=", 74))
	h.line("-- " + title)
	h.line("-- " + strings.Repeat("=", 74))
}

func (h *hardener) header() {
	h.linef("-- pgveil harden: defence-in-depth SQL for the policy %s (hash %s)", h.pol.Source, h.pol.Hash)
	if h.up != nil {
		h.linef("-- for database %s, read from --upstream.", h.up.snap.Database)
	} else {
		h.line("-- without --upstream: column grants are a commented template, and every role")
		h.line("-- named below must exist.")
	}
	h.comment("pgveil masks at the proxy; this script makes the database itself refuse what the proxy never lets a masked session do, so that a masked role that connects to PostgreSQL directly (bypassing the proxy) still cannot read denied columns, run SQL from strings, read files or large objects, or create temporary objects. Review it, then run it as a superuser (or the owner of the objects) with: psql -v ON_ERROR_STOP=1 -f harden.sql. It runs in one transaction. Re-run it after changing the policy or the schema.")
	h.line("--")
	if len(h.masked) > 0 {
		h.line("-- Masked roles (the proxy rewrites their statements):")
		for _, r := range h.masked {
			h.linef("--   %s: %s", r, h.describe(r))
		}
	}
	if len(h.raw) > 0 {
		h.linef("-- Roles that see everything raw (left as they are): %s", strings.Join(h.raw, ", "))
	}
	for _, n := range h.notes {
		h.comment("Note: " + n)
	}
}

// describe says what a masked role sees masked.
func (h *hardener) describe(role string) string {
	g := h.grants[role]
	used := map[string]bool{}
	for _, r := range h.pol.Columns {
		used[r.Class.Name] = true
	}
	var masked, denied []string
	for _, c := range sortedKeys(h.pol.Classes) {
		if !used[c] || g.Treatment(c) != rules.TreatMask {
			continue
		}
		if h.pol.Classes[c].Mask.Kind == rules.MaskDeny {
			denied = append(denied, c)
		} else {
			masked = append(masked, c)
		}
	}
	var parts []string
	if len(masked) > 0 {
		parts = append(parts, "masks "+strings.Join(masked, ", "))
	}
	if len(denied) > 0 {
		parts = append(parts, "denies "+strings.Join(denied, ", "))
	}
	if len(g.RowFilters()) > 0 {
		parts = append(parts, "row filters apply")
	}
	if len(parts) == 0 {
		return "row filters apply"
	}
	return strings.Join(parts, "; ")
}

// roleList quotes roles for GRANT/REVOKE.
func roleList(roles []string) string {
	q := make([]string, len(roles))
	for i, r := range roles {
		q[i] = quoteIdent(r)
	}
	return strings.Join(q, ", ")
}

func (h *hardener) temporary() {
	h.section("1. No temporary objects for masked roles")
	h.comment("Masked sessions need no temporary tables, functions or types: through the proxy they may not create any, and on a direct connection a temporary object could shadow a name the masking relies on (pg_temp is searched first). PostgreSQL grants TEMPORARY on every database to PUBLIC, so revoking it from a single role changes nothing while PUBLIC holds it: revoke it from PUBLIC and from the masked roles, and grant it back to the roles that see everything raw.")
	revoke := "PUBLIC, " + roleList(h.masked)
	if h.up != nil {
		db := quoteIdent(h.up.snap.Database)
		h.linef("REVOKE TEMPORARY ON DATABASE %s FROM %s;", db, revoke)
		if len(h.raw) > 0 {
			h.linef("GRANT TEMPORARY ON DATABASE %s TO %s;", db, roleList(h.raw))
		}
	} else {
		body := formatBody(revoke) + formatBody(roleList(h.raw))
		tag := dollarTag(body)
		h.comment("The database is the one this script runs in (current_database()).")
		h.linef("DO %s BEGIN", tag)
		h.linef("  EXECUTE format('REVOKE TEMPORARY ON DATABASE %%I FROM %s', current_database());", formatBody(revoke))
		if len(h.raw) > 0 {
			h.linef("  EXECUTE format('GRANT TEMPORARY ON DATABASE %%I TO %s', current_database());", formatBody(roleList(h.raw)))
		}
		h.linef("END %s;", tag)
	}
	h.comment("Other accounts that create temporary tables (applications, migrations) need GRANT TEMPORARY ON DATABASE ... TO them.")
}

// formatBody escapes s for use as literal text in the format string of
// PostgreSQL's format(): % doubled, and ' doubled for the SQL literal.
func formatBody(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "%", "%%"), "'", "''")
}

func (h *hardener) functions() {
	h.section("2. No SQL from strings, no server files, no large objects")
	h.comment("These functions run a query given as text (query_to_xml, cursor_to_xml, table_to_xml and the like, ts_stat, ts_rewrite), read server files, or read and write large objects. The proxy refuses them for masked sessions (rule \"function\"); on a direct connection SQL in a string is not something column grants can reason about, and large objects are data outside any table. PUBLIC may execute most of them, so they are revoked from PUBLIC and the masked roles, and granted back to the roles that see everything raw.")
	from := "PUBLIC, " + roleList(h.masked)
	for _, f := range publicFunctions {
		h.linef("REVOKE EXECUTE ON FUNCTION pg_catalog.%s FROM %s;", f, from)
	}
	if len(h.raw) > 0 {
		for _, f := range publicFunctions {
			h.linef("GRANT EXECUTE ON FUNCTION pg_catalog.%s TO %s;", f, roleList(h.raw))
		}
	}
	h.comment("Server-file functions are superuser-only after initdb; revoke them again in case they were granted, and do not grant them back.")
	for _, f := range serverFileFunctions {
		h.linef("REVOKE EXECUTE ON FUNCTION pg_catalog.%s FROM %s;", f, from)
	}
	var names []string
	for _, f := range append(slices.Clone(publicFunctions), serverFileFunctions...) {
		names = append(names, "'"+funcName(f)+"'")
	}
	names = slices.Compact(names)
	h.comment("Overloads of the same functions that other PostgreSQL versions add, and the dblink extension's functions if it is installed (they run SQL on any server, including this one):")
	stmt := "REVOKE EXECUTE ON FUNCTION %s FROM " + formatBody(from)
	tag := dollarTag(stmt)
	h.linef("DO %s", tag)
	h.line("DECLARE f regprocedure;")
	h.line("BEGIN")
	h.line("  FOR f IN SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p")
	h.line("           WHERE (p.pronamespace = 'pg_catalog'::regnamespace")
	h.linef("                  AND p.proname IN (%s))", strings.Join(names, ", "))
	h.line("              OR p.oid IN (SELECT d.objid FROM pg_catalog.pg_depend d")
	h.line("                           JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid")
	h.line("                           WHERE d.classid = 'pg_catalog.pg_proc'::regclass")
	h.line("                             AND d.deptype = 'e' AND e.extname = 'dblink')")
	h.line("  LOOP")
	h.linef("    EXECUTE format('%s', f);", stmt)
	h.line("  END LOOP;")
	h.linef("END %s;", tag)
}

// dollarTag returns a dollar-quote tag that does not occur in body.
func dollarTag(body string) string {
	tag := "$pgveil$"
	for i := 1; strings.Contains(body, tag); i++ {
		tag = fmt.Sprintf("$pgveil%d$", i)
	}
	return tag
}

func (h *hardener) columnGrants() {
	h.section("3. Column grants without deny-class columns")
	h.comment("The proxy masks a classified column by reading it: its rewritten SQL runs as the client's own role and computes the mask from the raw value (e.g. email → a***@example.com). So masked-but-not-denied columns must stay readable by the masked role. A deny-class column is different: the proxy's masking sub-query never reads it, it projects NULL in its place, and refuses statements that name it. Granting SELECT on every column except the deny-class ones keeps every query through the proxy working while a direct connection cannot read them (42501 permission denied).")
	caveat := "A REVOKE from one role does not touch privileges it holds through PUBLIC or through roles it is a member of, and a table's owner may grant itself anything"
	if h.up == nil {
		h.comment(caveat + ": check for both (\\dp in psql).")
		h.policyTemplate()
		return
	}
	h.comment(caveat + ": those cases are flagged below.")
	printed := false
	for _, rel := range h.liveRelations() {
		if rel.Kind == catalog.KindView || rel.Kind == catalog.KindMatView {
			if !classifiesAny(h.pol, rel) {
				continue // see section 4
			}
		}
		// Roles with the same column list share one GRANT.
		type group struct {
			cols  []string
			roles []string
		}
		var groups []*group
		var warnings []string
		for _, role := range h.masked {
			denied := h.deniedColumns(rel, role)
			if len(denied) == 0 {
				continue
			}
			var keep []string
			for _, c := range rel.Columns {
				if !slices.Contains(denied, c.Name) {
					keep = append(keep, c.Name)
				}
			}
			// A grantee this script also fixes for these columns is no
			// way around it.
			fixed := func(grantee string) bool {
				d := h.deniedColumns(rel, grantee)
				return !slices.ContainsFunc(denied, func(c string) bool { return !slices.Contains(d, c) })
			}
			direct, via, owner := h.privilege(rel, role, denied, fixed)
			if owner {
				warnings = append(warnings, fmt.Sprintf("WARNING: %s owns %s and can grant itself any privilege on it: transfer ownership to a role that is not masked.", role, rel.Name))
			}
			if len(via) > 0 {
				warnings = append(warnings, fmt.Sprintf("WARNING: %s can read %s (%s) through SELECT granted to %s; revoke it there (and grant to the raw roles that need it), or those columns stay readable on a direct connection.",
					role, rel.Name, strings.Join(denied, ", "), strings.Join(via, ", ")))
			}
			if direct == nil {
				continue
			}
			if !direct.table {
				// Column privileges only: keep them, less the denied ones.
				keep = slices.DeleteFunc(keep, func(c string) bool { return !direct.cols[c] })
			}
			var grp *group
			for _, x := range groups {
				if slices.Equal(x.cols, keep) {
					grp = x
				}
			}
			if grp == nil {
				grp = &group{cols: keep}
				groups = append(groups, grp)
			}
			grp.roles = append(grp.roles, role)
		}
		if len(groups) == 0 && len(warnings) == 0 {
			continue
		}
		printed = true
		h.line("")
		h.linef("-- %s %s", kindName(rel.Kind), rel.Name)
		for _, w := range warnings {
			h.comment(w)
		}
		for _, grp := range groups {
			h.linef("REVOKE SELECT ON TABLE %s FROM %s;", quoteName(rel.Name), roleList(grp.roles))
			if len(grp.cols) > 0 {
				cols := make([]string, len(grp.cols))
				for i, c := range grp.cols {
					cols[i] = quoteIdent(c)
				}
				h.linef("GRANT SELECT (%s) ON TABLE %s TO %s;", strings.Join(cols, ", "), quoteName(rel.Name), roleList(grp.roles))
			}
		}
	}
	if !printed {
		h.comment("No masked role sees a deny-class column on any relation: no column grants to change (masked columns must stay readable).")
	}
}

// privilege reports how role holds SELECT on rel: its own grant (nil if
// none), the other grantees it inherits SELECT on the table or on one of
// the denied columns from (PUBLIC, or roles it is a member of) and that
// this script does not fix itself (fixed), and whether it owns rel.
func (h *hardener) privilege(rel *catalog.Relation, role string, denied []string, fixed func(grantee string) bool) (*selectGrant, []string, bool) {
	acl := h.acls[rel.OID]
	direct := acl[role]
	member := map[string]bool{"": true}
	for _, r := range h.up.snap.RolesOf(role) {
		if r != role {
			member[r] = true
		}
	}
	var via []string
	for _, grantee := range sortedKeys(acl) {
		g := acl[grantee]
		if grantee == role || !member[grantee] || (grantee != "" && fixed(grantee)) {
			continue
		}
		if g.table || slices.ContainsFunc(denied, func(c string) bool { return g.cols[c] }) {
			if grantee == "" {
				grantee = "PUBLIC"
			}
			via = append(via, grantee)
		}
	}
	return direct, via, rel.Owner == role
}

// deniedColumns returns the columns of rel that role sees as deny.
func (h *hardener) deniedColumns(rel *catalog.Relation, role string) []string {
	g := h.grants[role]
	if g == nil {
		return nil
	}
	var out []string
	for _, c := range rel.Columns {
		if deniedFor(g, rewrite.ColumnRule(h.pol, h.up.snap, g, rel, c.Name)) {
			out = append(out, c.Name)
		}
	}
	return out
}

// policyTemplate prints the column-grant block without a database: the
// tables and their deny-class columns are known, the other columns not.
func (h *hardener) policyTemplate() {
	printed := false
	for _, t := range sortedNames(classifiedRelations(h.pol)) {
		byDenied := map[string][]string{}
		var order []string
		for _, role := range h.masked {
			g := h.grants[role]
			var denied []string
			for _, c := range classifiedColumns(h.pol, t) {
				if deniedFor(g, h.pol.Column(rules.ColumnKey{Schema: t.Schema, Table: t.Name, Column: c})) {
					denied = append(denied, quoteIdent(c))
				}
			}
			if len(denied) == 0 {
				continue
			}
			k := strings.Join(denied, ", ")
			if byDenied[k] == nil {
				order = append(order, k)
			}
			byDenied[k] = append(byDenied[k], role)
		}
		for _, k := range order {
			printed = true
			roles := roleList(byDenied[k])
			h.line("")
			h.linef("-- %s: replace the list with every column except %s", t, k)
			h.linef("-- REVOKE SELECT ON TABLE %s FROM %s;", quoteName(t), roles)
			h.linef("-- GRANT SELECT (<every column of %s except %s>) ON TABLE %s TO %s;", t, k, quoteName(t), roles)
		}
	}
	if printed {
		h.comment("Run pgveil harden --upstream postgres://pgveil@host/db to get these with the real column lists (and partitions, inheritance children and privileges checked).")
	} else {
		h.comment("No masked role sees a deny-class column: no column grants to change (masked columns must stay readable).")
	}
}

// views revokes SELECT on views over protected tables that the policy
// does not classify: the proxy refuses them to masked sessions (rule
// "view"), but a direct reader of a view reads its tables with the view
// owner's rights, raw.
func (h *hardener) views() {
	if h.up == nil {
		return
	}
	var lines []string
	for _, rel := range h.liveRelations() {
		if (rel.Kind != catalog.KindView && rel.Kind != catalog.KindMatView) || classifiesAny(h.pol, rel) {
			continue
		}
		var revoke, warn []string
		for _, role := range h.masked {
			if !h.protectedFor(role, rel.Reads) {
				continue
			}
			fixed := func(grantee string) bool { return h.grants[grantee] != nil && h.protectedFor(grantee, rel.Reads) }
			direct, via, _ := h.privilege(rel, role, nil, fixed)
			if direct != nil {
				revoke = append(revoke, role)
			}
			if len(via) > 0 {
				warn = append(warn, fmt.Sprintf("WARNING: %s reads %s %s through SELECT granted to %s.", role, kindName(rel.Kind), rel.Name, strings.Join(via, ", ")))
			}
		}
		if len(revoke) > 0 {
			lines = append(lines, fmt.Sprintf("REVOKE SELECT ON TABLE %s FROM %s;", quoteName(rel.Name), roleList(revoke)))
		}
		for _, w := range warn {
			lines = append(lines, "-- "+w)
		}
	}
	if len(lines) == 0 {
		return
	}
	h.section("4. Views over protected tables that the policy does not classify")
	h.comment("A view reads its tables with its owner's rights, so column grants on the tables do not limit its readers. The proxy refuses these views to masked sessions (rule \"view\"); revoke them too.")
	for _, l := range lines {
		h.line(l)
	}
}

// protectedFor reports whether role sees any of rels masked or filtered.
func (h *hardener) protectedFor(role string, rels []catalog.Name) bool {
	g := h.grants[role]
	snap := h.up.snap
	for _, n := range rels {
		rel := snap.Relation(n)
		if rel == nil || rel.Kind == catalog.KindView || rel.Kind == catalog.KindMatView {
			continue
		}
		for _, f := range g.RowFilters() {
			if f.Schema == n.Schema && f.Table == n.Name {
				return true
			}
		}
		for _, c := range rel.Columns {
			if r := rewrite.ColumnRule(h.pol, snap, g, rel, c.Name); r != nil && g.ColumnTreatment(r) == rules.TreatMask {
				return true
			}
		}
	}
	return false
}

func (h *hardener) searchPath() {
	h.section("5. A sane search_path, standard strings")
	h.comment("Pin the masked roles' default search_path, so that unqualified names resolve to the same objects for the proxy and for the server. The proxy tracks SET search_path within a session. Pin standard_conforming_strings too: the proxy requires it on and refuses to change it, but a server-wide change (postgresql.conf and a reload) would reach running sessions before the proxy hears of it; a role setting takes precedence over the configuration file.")
	for _, r := range h.masked {
		h.linef(`ALTER ROLE %s SET search_path = "$user", public;`, quoteIdent(r))
		h.linef(`ALTER ROLE %s SET standard_conforming_strings = on;`, quoteIdent(r))
	}
}

func (h *hardener) rowFilters() {
	if len(h.pol.RowFilters) == 0 {
		return
	}
	h.section("6. Row filters (template)")
	h.comment("The proxy adds each row filter's WHERE to the masking sub-query for its roles; a direct connection sees every row. Row-level security makes the database apply the same filter. It is left commented out because RLS applies to every non-owner role: each other role that reads the table needs a policy of its own (USING (true)), and permissive policies combine with OR, so a filtered role must not match any of them.")
	for i, f := range h.pol.RowFilters {
		t := quoteName(catalog.Name{Schema: f.Schema, Name: f.Table})
		h.linef("-- ALTER TABLE %s ENABLE ROW LEVEL SECURITY;", t)
		h.linef("-- CREATE POLICY pgveil_row_filter_%d ON %s FOR SELECT TO %s USING (%s);", i, t, roleList(f.Roles), strings.ReplaceAll(f.Where, "\n", " "))
		h.linef("-- CREATE POLICY pgveil_all_rows ON %s FOR SELECT TO <every other reader> USING (true);", t)
	}
}

func (h *hardener) securityDefiners() {
	if len(h.secdef) == 0 {
		return
	}
	h.section("7. SECURITY DEFINER functions (review)")
	h.comment("These run with their owner's rights, so a masked role that may execute them on a direct connection reads whatever the owner can. The proxy lets masked sessions call built-in functions only. Review each; for example REVOKE EXECUTE ON FUNCTION ... FROM PUBLIC and grant it to the roles that need it.")
	for _, f := range h.secdef {
		h.linef("--   %s", f)
	}
}

func (h *hardener) hbaSnippet() {
	h.line("")
	h.line("-- " + strings.Repeat("=", 74))
	h.line("-- 8. pg_hba.conf: masked roles connect only through the proxy")
	h.line("-- " + strings.Repeat("=", 74))
	h.comment("Not SQL: add these lines to pg_hba.conf above any line that would match these roles (the first matching line wins), then reload (SELECT pg_reload_conf()). Use the address pgveil connects from (--proxy-address) and your authentication method.")
	users := make([]string, len(h.masked))
	for i, r := range h.masked {
		users[i] = hbaQuote(r)
	}
	u := strings.Join(users, ",")
	h.linef("--   host   all  %s  %s  scram-sha-256", u, h.hba)
	h.linef("--   host   all  %s  all  reject", u)
	h.linef("--   local  all  %s  reject", u)
}

// hbaQuote quotes a role name for pg_hba.conf when it needs it.
func hbaQuote(s string) string {
	if s != "" && !strings.ContainsAny(s, " ,\"#\t+@") && s != "all" && s != "sameuser" && s != "samerole" && s != "samegroup" && s != "replication" {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}
