package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/pflag"

	"github.com/pgveil/pgveil/catalog"
	"github.com/pgveil/pgveil/rules"
)

// severity ranks a finding of pgveil check.
type severity int

// Severities, least to most serious. Any error makes check exit 1.
const (
	sevInfo severity = iota
	sevWarning
	sevError
)

func (s severity) String() string {
	switch s {
	case sevError:
		return "error"
	case sevWarning:
		return "warning"
	}
	return "info"
}

// finding is one line of the check report.
type finding struct {
	sev severity
	msg string
}

// findings collects a report; the methods format like fmt.Sprintf.
type findings []finding

func (f *findings) add(sev severity, format string, args ...any) {
	*f = append(*f, finding{sev, fmt.Sprintf(format, args...)})
}

// sorted orders the findings by severity (errors first), then message, so
// that the report is stable whatever the map order of the policy.
func (f findings) sorted() findings {
	out := slices.Clone(f)
	slices.SortStableFunc(out, func(a, b finding) int {
		if a.sev != b.sev {
			return int(b.sev) - int(a.sev)
		}
		return strings.Compare(a.msg, b.msg)
	})
	return slices.Compact(out)
}

// count returns the number of findings of severity s.
func (f findings) count(s severity) int {
	n := 0
	for _, x := range f {
		if x.sev == s {
			n++
		}
	}
	return n
}

// errFindings makes pgveil check exit 1: the report has errors.
var errFindings = errors.New("the policy has errors (see the report)")

// upstreamTimeout bounds connecting to --upstream and reading the catalog
// for check and harden.
const upstreamTimeout = 30 * time.Second

func runCheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("check", pflag.ContinueOnError)
	policyFile := fs.String("policy", "", "policy file (YAML) to validate (required)")
	upstream := fs.String("upstream", "", "also check the policy against the live schema and roles of this database, read as the proxy's own account: postgres://pgveil:secret@host:5432/db")
	var keys keyFlags
	keys.register(fs)
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	pol, err := loadPolicy(*policyFile, stderr)
	if err != nil {
		return err
	}
	report := staticFindings(pol)
	where := "schema not checked (give --upstream to check it against a database)"
	if *upstream != "" {
		up, err := connectUpstream(ctx, *upstream)
		if err != nil {
			return err
		}
		defer up.close()
		more, err := liveFindings(ctx, pol, up)
		if err != nil {
			return err
		}
		report = append(report, more...)
		report = append(report, encryptedTypeFindings(pol, up.snap)...)
		where = fmt.Sprintf("checked against database %s", up.snap.Database)
	}
	more, keysWhere, err := keyFindings(ctx, pol, &keys)
	if err != nil {
		return err
	}
	report = append(report, more...)
	where += keysWhere
	report = report.sorted()
	for _, f := range report {
		fmt.Fprintf(stdout, "%s: %s\n", f.sev, f.msg)
	}
	fmt.Fprintf(stdout, "%s: %s, %s, %s; %d classes, %d columns, %d roles; %s\n", pol.Source,
		plural(report.count(sevError), "error"), plural(report.count(sevWarning), "warning"),
		plural(report.count(sevInfo), "note"), len(pol.Classes), len(pol.Columns), len(pol.Roles), where)
	if report.count(sevError) > 0 {
		return errFindings
	}
	return nil
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// loadPolicy loads and validates the policy file. An invalid policy is a
// usage error (exit 2); each problem goes to stderr on its own line as the
// rules package reports it (file:line: field: message).
func loadPolicy(file string, stderr io.Writer) (*rules.Policy, error) {
	if file == "" {
		return nil, usagef("missing --policy")
	}
	pol, err := rules.Load(file)
	if err == nil {
		return pol, nil
	}
	var pe *rules.PolicyError
	if !errors.As(err, &pe) {
		return nil, usagef("cannot read --policy: %v", err)
	}
	n := 0
	for _, line := range strings.Split(err.Error(), "\n") {
		fmt.Fprintln(stderr, line)
		n++
	}
	return nil, usagef("invalid policy %s: %s", file, plural(n, "problem"))
}

// upstreamDB is a connection to --upstream as the proxy's own account and
// the catalog snapshot read over it.
type upstreamDB struct {
	conn    *pgx.Conn
	snap    *catalog.Snapshot
	account string // the user of --upstream
}

func (u *upstreamDB) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = u.conn.Close(ctx)
}

// connectUpstream connects as the account in upstream (the proxy's own,
// the one serve --policy reads the catalog with) and loads a snapshot.
func connectUpstream(ctx context.Context, upstream string) (*upstreamDB, error) {
	u, err := url.Parse(upstream)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return nil, usagef("invalid --upstream: want postgres://user[:password]@host[:port]/db")
	}
	if u.User == nil || u.User.Username() == "" {
		return nil, usagef("--upstream needs an account to read the catalog with (postgres://pgveil:secret@host/db)")
	}
	conn, err := catalogConnString(upstream)
	if err != nil {
		return nil, usagef("invalid --upstream: %v", err)
	}
	cfg, err := pgx.ParseConfig(conn)
	if err != nil {
		return nil, usagef("invalid --upstream: %v", err)
	}
	ctx, cancel := context.WithTimeout(ctx, upstreamTimeout)
	defer cancel()
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("upstream: %w", err)
	}
	snap, err := catalog.Load(ctx, c)
	if err != nil {
		_ = c.Close(context.Background())
		return nil, fmt.Errorf("upstream: %w", err)
	}
	return &upstreamDB{conn: c, snap: snap, account: u.User.Username()}, nil
}

// loginRoles returns the roles that can log in, sorted. The snapshot can
// look roles up by name but not list them, so they are read here.
func (u *upstreamDB) loginRoles(ctx context.Context) ([]string, error) {
	rows, err := u.conn.Query(ctx, `SELECT rolname FROM pg_catalog.pg_roles WHERE rolcanlogin ORDER BY 1`)
	if err != nil {
		return nil, fmt.Errorf("upstream: list roles: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("upstream: list roles: %w", err)
	}
	return names, nil
}

// staticFindings are what check reports from the policy file alone.
func staticFindings(pol *rules.Policy) findings {
	var out findings
	used := map[string]bool{}
	for k, r := range pol.Columns {
		used[r.Class.Name] = true
		if e := r.Encrypted; e != nil {
			extra := ""
			if e.Searchable {
				extra = ", searchable"
			}
			who := "no role may decrypt it"
			if rs := rolesWith(pol, r.Class.Name, rules.TreatDecrypt); len(rs) > 0 {
				who = "decrypted for " + strings.Join(rs, ", ")
			}
			out.add(sevInfo, "%s: declared encrypted (key %s, mode %s%s); %s", columnName(k), e.Key, e.Mode, extra, who)
		}
	}
	for name := range pol.Classes {
		if !used[name] {
			out.add(sevInfo, "class %s is not used by any column", name)
		}
	}
	return out
}

// keyFindings checks, when the policy has encrypted columns and a key
// service is configured, that every key exists (and is convergent for
// searchable transit columns on Vault); it returns the findings and what
// to add to the summary line.
func keyFindings(ctx context.Context, pol *rules.Policy, keys *keyFlags) (findings, string, error) {
	encrypted := false
	for _, r := range pol.Columns {
		encrypted = encrypted || r.Encrypted != nil
	}
	if !encrypted {
		return nil, "", nil
	}
	if !keys.configured() {
		return nil, "; keys not checked (give --keyring or --vault-addr)", nil
	}
	svc, err := keys.open(ctx, nil)
	if err != nil {
		return nil, "", err
	}
	defer svc.Close()
	kctx, cancel := context.WithTimeout(ctx, upstreamTimeout)
	defer cancel()
	var out findings
	for _, p := range checkKeys(kctx, pol, svc) {
		out.add(sevError, "%s", p)
	}
	return out, "; keys checked", nil
}

// encryptedTypeFindings checks that every encrypted column can hold
// ciphertext, which is text: its type (or a domain's base type) must be
// text or varchar. A varchar with a length limit is a warning: ciphertext
// is about 50 (transit) to 140 (envelope) characters longer than the value.
func encryptedTypeFindings(pol *rules.Policy, snap *catalog.Snapshot) findings {
	var out findings
	for k, r := range pol.Columns {
		if r.Encrypted == nil {
			continue
		}
		rel := snap.Relation(catalog.Name{Schema: k.Schema, Name: k.Table})
		if rel == nil {
			continue
		}
		col := rel.Column(k.Column)
		if col == nil {
			continue // policyProblems reports it
		}
		typ := col.Type
		if col.BaseType != "" {
			typ = col.BaseType
		}
		switch {
		case typ == "text" || typ == "character varying":
		case strings.HasPrefix(typ, "character varying("):
			out.add(sevWarning, "%s: encrypted column has type %s: ciphertext is about 50 (transit) to 140 (envelope) characters longer than the value; text is safer", columnName(k), col.Type)
		default:
			out.add(sevError, "%s: encrypted column has type %s: ciphertext is text, so the column must be text or varchar (ALTER TABLE %s ALTER COLUMN %s TYPE text)",
				columnName(k), col.Type, quoteName(catalog.Name{Schema: k.Schema, Name: k.Table}), quoteIdent(k.Column))
		}
	}
	return out
}

// rolesWith returns the policy roles whose own grant gives class treatment t.
func rolesWith(pol *rules.Policy, class string, t rules.Treatment) []string {
	var out []string
	for _, name := range sortedKeys(pol.Roles) {
		g, err := pol.Grants([]string{name})
		if err == nil && g.Treatment(class) == t {
			out = append(out, name)
		}
	}
	return out
}

// liveFindings are what check reports from the policy and the database.
func liveFindings(ctx context.Context, pol *rules.Policy, up *upstreamDB) (findings, error) {
	var out findings
	snap := up.snap
	for _, p := range policyProblems(pol, snap) {
		out.add(sevError, "%s", p)
	}

	// Row filters: the table must exist and the condition must be valid
	// SQL over it, as the proxy will paste it into its masking sub-query.
	for i, f := range pol.RowFilters {
		name := catalog.Name{Schema: f.Schema, Name: f.Table}
		rel := snap.Relation(name)
		if rel == nil {
			out.add(sevError, "row_filters[%d]: table %s: no such relation in database %s", i, name, snap.Database)
			continue
		}
		if err := up.checkFilter(ctx, rel, f.Where); err != nil {
			out.add(sevError, "row_filters[%d]: where %q on %s: %v", i, f.Where, name, err)
		}
		for _, r := range f.Roles {
			if snap.Role(r) == nil {
				out.add(sevWarning, "row_filters[%d]: role %s does not exist in the database", i, r)
			}
		}
	}

	// Relations the policy classifies or filters, and the views over them.
	protected := protectedRelations(pol, snap)
	viewReads := map[catalog.Name][]string{}
	for _, p := range sortedNames(protected) {
		for _, v := range snap.Dependents(p) {
			viewReads[v] = append(viewReads[v], p.String())
		}
	}
	for v, tables := range viewReads {
		rel := snap.Relation(v)
		if rel == nil {
			continue
		}
		if !classifiesAny(pol, rel) {
			out.add(sevWarning, "%s %s reads protected %s %s but the policy classifies none of its columns: masked sessions are refused on it (classify its columns to let them read it masked)",
				kindName(rel.Kind), v, pluralWord(len(tables), "table"), strings.Join(tables, ", "))
			continue
		}
		// Partly classified: an unclassified column named like a
		// classified column of a table it reads makes the proxy refuse
		// the view; any other unclassified column is shown raw.
		var named, other []string
		for _, c := range rel.Columns {
			if pol.Column(rules.ColumnKey{Schema: v.Schema, Table: v.Name, Column: c.Name}) != nil {
				continue
			}
			classified := false
			for _, t := range rel.Reads {
				classified = classified || pol.Column(rules.ColumnKey{Schema: t.Schema, Table: t.Name, Column: c.Name}) != nil
			}
			if classified {
				named = append(named, c.Name)
			} else {
				other = append(other, c.Name)
			}
		}
		if len(named) > 0 {
			out.add(sevWarning, "%s %s classifies some of its columns but not %s, classified on the %s it reads (%s): masked sessions that see %s masked are refused on it",
				kindName(rel.Kind), v, strings.Join(named, ", "), pluralWord(len(tables), "table"), strings.Join(tables, ", "), pluralWord(len(named), "that column"))
		}
		if len(other) > 0 {
			out.add(sevInfo, "%s %s reads protected %s and shows its unclassified %s %s as stored: check that none carries a protected value under another name",
				kindName(rel.Kind), v, strings.Join(tables, ", "), pluralWord(len(other), "column"), strings.Join(other, ", "))
		}
	}

	// Partitions and inheritance children of classified tables.
	for _, t := range sortedNames(classifiedRelations(pol)) {
		rel := snap.Relation(t)
		if rel == nil {
			continue
		}
		cols := classifiedColumns(pol, t)
		for _, d := range snap.Descendants(t) {
			child := snap.Relation(d)
			if child == nil {
				continue
			}
			if isPartitionOf(snap, child, t) {
				var differ []string
				for _, c := range cols {
					if own := pol.Column(rules.ColumnKey{Schema: d.Schema, Table: d.Name, Column: c}); own != nil && own.Class.Name != pol.Column(rules.ColumnKey{Schema: t.Schema, Table: t.Name, Column: c}).Class.Name {
						differ = append(differ, c)
					}
				}
				if len(differ) > 0 {
					out.add(sevWarning, "%s is a partition of classified table %s but classifies %s differently: reading %s applies, for every row, the stricter of the two rules",
						d, t, strings.Join(differ, ", "), t)
					continue
				}
				out.add(sevInfo, "%s is a partition of classified table %s: the proxy masks it with %s's classification", d, t, t)
				continue
			}
			var missing []string
			for _, c := range cols {
				if child.Column(c) != nil && pol.Column(rules.ColumnKey{Schema: d.Schema, Table: d.Name, Column: c}) == nil {
					missing = append(missing, c)
				}
			}
			if len(missing) > 0 {
				out.add(sevError, "%s inherits from classified table %s (INHERITS) but the policy does not classify its %s %s: classify them under columns: (only partitions take their parent's classification)",
					d, t, pluralWord(len(missing), "column"), strings.Join(missing, ", "))
			} else {
				out.add(sevInfo, "%s inherits from classified table %s and is classified itself", d, t)
			}
		}
	}

	// Roles: those the policy names must exist; those that can log in
	// should match a policy role, or they get the unknown_roles treatment.
	for _, name := range sortedKeys(pol.Roles) {
		if snap.Role(name) == nil {
			out.add(sevWarning, "roles.%s: role %s does not exist in the database", name, name)
		}
	}
	logins, err := up.loginRoles(ctx)
	if err != nil {
		return nil, err
	}
	for _, name := range logins {
		roles := snap.RolesOf(name)
		var matched []string
		for _, r := range roles {
			if pol.Roles[r] != nil {
				matched = append(matched, r)
			}
		}
		g, gerr := pol.Grants(roles)
		switch {
		case len(matched) == 0 && pol.UnknownRoles == "reject":
			out.add(sevInfo, "login role %s matches no policy role: the proxy refuses its sessions (unknown_roles: reject)", name)
		case len(matched) == 0:
			out.add(sevInfo, "login role %s matches no policy role: through the proxy it sees every class masked (unknown_roles: mask)", name)
		}
		if r := snap.Role(name); r != nil && r.Superuser && gerr == nil && !g.AllRaw() {
			out.add(sevInfo, "login role %s is a superuser: only the proxy masks its sessions; a direct connection reads everything, and harden cannot restrict it", name)
		}
	}
	return out, nil
}

// checkFilter checks a row filter condition the way the server will see
// it in the proxy's masking sub-query: it prepares (parses and analyses,
// without running) a query applying it to a stand-in for rel with the same
// column names and types, so that the proxy's account needs no privilege
// on rel. The extended protocol keeps the text to one statement.
func (u *upstreamDB) checkFilter(ctx context.Context, rel *catalog.Relation, where string) error {
	cols := make([]string, len(rel.Columns))
	for i, c := range rel.Columns {
		cols[i] = "NULL::" + c.Type + " AS " + quoteIdent(c.Name)
	}
	sql := "SELECT FROM (SELECT " + strings.Join(cols, ", ") + ") AS " + quoteIdent(rel.Name.Name) + " WHERE (" + where + ")"
	_, err := u.conn.PgConn().Prepare(ctx, "", sql, nil)
	return err
}

// protectedRelations returns the relations a masked session may see
// masked or filtered: those the policy classifies or filters, their
// partitions and inheritance children, and the tables above them.
func protectedRelations(pol *rules.Policy, snap *catalog.Snapshot) map[catalog.Name]bool {
	seeds := classifiedRelations(pol)
	for _, f := range pol.RowFilters {
		seeds[catalog.Name{Schema: f.Schema, Name: f.Table}] = true
	}
	out := map[catalog.Name]bool{}
	for n := range seeds {
		rel := snap.Relation(n)
		if rel == nil {
			continue
		}
		out[n] = true
		for _, d := range snap.Descendants(n) {
			out[d] = true
		}
		for _, a := range snap.Ancestors(rel) {
			out[a] = true
		}
	}
	for n := range out {
		if rel := snap.Relation(n); rel == nil || rel.Kind == catalog.KindView || rel.Kind == catalog.KindMatView {
			delete(out, n)
		}
	}
	return out
}

// isPartitionOf reports whether rel is a partition of t, directly or
// through sub-partitions.
func isPartitionOf(snap *catalog.Snapshot, rel *catalog.Relation, t catalog.Name) bool {
	seen := map[catalog.Name]bool{}
	for p := rel.Parent; !p.IsZero() && !seen[p]; {
		if p == t {
			return true
		}
		seen[p] = true
		pr := snap.Relation(p)
		if pr == nil {
			return false
		}
		p = pr.Parent
	}
	return false
}

// classifiedRelations returns the relations with a column under columns:.
func classifiedRelations(pol *rules.Policy) map[catalog.Name]bool {
	out := map[catalog.Name]bool{}
	for k := range pol.Columns {
		out[catalog.Name{Schema: k.Schema, Name: k.Table}] = true
	}
	return out
}

// classifiedColumns returns the classified columns of relation n, sorted.
func classifiedColumns(pol *rules.Policy, n catalog.Name) []string {
	var out []string
	for k := range pol.Columns {
		if k.Schema == n.Schema && k.Table == n.Name {
			out = append(out, k.Column)
		}
	}
	sort.Strings(out)
	return out
}

// classifiesAny reports whether the policy classifies a column of rel.
func classifiesAny(pol *rules.Policy, rel *catalog.Relation) bool {
	for _, c := range rel.Columns {
		if pol.Column(rules.ColumnKey{Schema: rel.Name.Schema, Table: rel.Name.Name, Column: c.Name}) != nil {
			return true
		}
	}
	return false
}

func kindName(k catalog.RelKind) string {
	switch k {
	case catalog.KindView:
		return "view"
	case catalog.KindMatView:
		return "materialized view"
	case catalog.KindPartitioned:
		return "partitioned table"
	case catalog.KindForeignTable:
		return "foreign table"
	}
	return "table"
}

func pluralWord(n int, w string) string {
	if n == 1 {
		return w
	}
	return w + "s"
}

func columnName(k rules.ColumnKey) string {
	return catalog.Name{Schema: k.Schema, Name: k.Table}.String() + "." + catalog.Name{Name: k.Column}.String()
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func sortedNames(m map[catalog.Name]bool) []catalog.Name {
	out := make([]catalog.Name, 0, len(m))
	for n := range m {
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b catalog.Name) int {
		return strings.Compare(a.Schema+"\x00"+a.Name, b.Schema+"\x00"+b.Name)
	})
	return out
}

// quoteIdent double-quotes an identifier for generated SQL; it always
// quotes, so keywords and capitals are safe.
func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// quoteName is quoteIdent of schema.name.
func quoteName(n catalog.Name) string { return quoteIdent(n.Schema) + "." + quoteIdent(n.Name) }
