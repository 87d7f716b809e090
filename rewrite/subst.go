package rewrite

import (
	"errors"
	"strconv"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/pgveil/pgveil/catalog"
	"github.com/pgveil/pgveil/rules"
)

// statisticsRelations expose sampled column values (most common values,
// histograms) to whoever may read them; masked sessions may not.
var statisticsRelations = map[string]bool{
	"pg_stats": true, "pg_stats_ext": true, "pg_stats_ext_exprs": true,
	"pg_statistic": true, "pg_statistic_ext_data": true,
}

// path is the session's name-resolution context.
func (w *walker) path() catalog.SearchPath {
	return catalog.SearchPath{Schemas: w.s.SearchPath, User: w.s.User}
}

// searchPath returns the schemas an unqualified name is looked up in, in
// order, as current_schemas(true) would report them.
func (w *walker) searchPath() []string { return w.s.Catalog.Path(w.path()) }

// resolve finds the relation a RangeVar names, as the server would. The
// rewrite then qualifies the name, so the server reads exactly the
// relation that was analysed.
func (w *walker) resolve(rv *pg_query.RangeVar) *catalog.Relation {
	var rel *catalog.Relation
	if rv.Schemaname != "" {
		rel = w.s.Catalog.ResolveQualified(w.path(), rv.Schemaname, rv.Relname)
	} else {
		rel = w.s.Catalog.Resolve(w.path(), rv.Relname)
	}
	if rel != nil {
		w.relationTypes(rel)
	}
	return rel
}

// policyNamesTable reports whether the policy classifies a table called
// name (in schema, or in any schema when schema is empty).
func (w *walker) policyNamesTable(schema, name string) bool {
	for k := range w.s.Policy.Columns {
		if k.Table == name && (schema == "" || k.Schema == schema) {
			return true
		}
	}
	for _, f := range w.s.Policy.RowFilters {
		if f.Table == name && (schema == "" || f.Schema == schema) {
			return true
		}
	}
	return false
}

// substitute replaces a FROM-list relation reference the session may not
// read raw with a masking sub-query under the same alias.
func (w *walker) substitute(n *pg_query.Node, rv *pg_query.RangeVar) error {
	if rv.Catalogname != "" {
		return refuse("unsupported-syntax", "cross-database references are not supported")
	}
	if rv.Schemaname == "" && w.isCTE(rv.Relname) {
		return nil
	}
	rel := w.resolve(rv)
	if rel == nil {
		// A relation the snapshot does not know may have been created
		// since it was read (a partition of a protected table, a view
		// over one): it is never forwarded unanalysed.
		return refuse("catalog", "relation %q does not exist on the search_path, or is newer than pgveil's catalog snapshot (retry shortly)", rv.Relname)
	}
	if rel.Name.Schema == "pg_catalog" && statisticsRelations[rel.Name.Name] {
		return refuse("statistics", "%s exposes sampled column values and is not available to masked sessions", rel.Name.Name)
	}
	proj, denied, err := w.projection(rel, rv.Inh)
	if err != nil {
		return err
	}
	// Qualify the name so the server reads exactly the relation analysed.
	rv.Schemaname = rel.Name.Schema
	if proj == "" {
		return nil
	}
	if w.explain {
		return refuse("explain", "EXPLAIN over a protected relation (%s) is not allowed: planner estimates come from raw statistics", qualified(rel.Name))
	}
	if rv.Alias == nil {
		// The sub-query takes the relation's bare name as its alias, so
		// that name.column keeps working; where two unaliased relations
		// share that name (FROM a.t, b.t) it takes "schema.name", which no
		// unquoted name can equal, and schema.name.column references
		// are rewritten to it.
		alias := rv.Relname
		if w.ambiguous[rv.Relname] {
			alias = rel.Name.Schema + "." + rel.Name.Name
		}
		rv.Alias = &pg_query.Alias{Aliasname: alias}
		w.unaliased[rel.Name] = alias
	}
	// The relation becomes a placeholder name that Rewrite replaces with
	// the parenthesised masking sub-query after deparsing, so the (large,
	// cached) sub-query is parsed and deparsed once, not per statement.
	name := placeholderPrefix + strconv.Itoa(len(*w.placeholders))
	*w.placeholders = append(*w.placeholders, placeholder{name: name, sql: proj})
	rv.Schemaname, rv.Relname, rv.Inh = "", name, true
	w.substituted = true
	w.masked = append(w.masked, rel.Name)
	// The masking sub-query casts each masked value back to its column's
	// type, domains included.
	var maskedCols []string
	for name := range w.maskedColumns(rel) {
		maskedCols = append(maskedCols, name)
	}
	w.castToColumns(rel, maskedCols)
	for _, d := range denied {
		w.denied[d] = true
	}
	return nil
}

// columnRule returns the rule governing column col of rel for the session.
func (w *walker) columnRule(rel *catalog.Relation, col string) *rules.ColumnRule {
	return ColumnRule(w.s.Policy, w.s.Catalog, w.s.Grants, rel, col)
}

// ColumnRule returns the policy rule that governs column col of rel for a
// session with grants g: the strictest of the rule on rel itself (else on
// its nearest ancestor: partitions and inheritance children inherit their
// parents' classification) and the rules on its descendants, whose rows
// reading rel returns too (so reading a parent never shows a child's
// column under a weaker treatment than the child's own). Stricter means a
// less permissive treatment, and among masks, deny. pgveil harden uses it
// to stay in step with the rewrite.
func ColumnRule(p *rules.Policy, snap *catalog.Snapshot, g *rules.Grants, rel *catalog.Relation, col string) *rules.ColumnRule {
	key := func(n catalog.Name) rules.ColumnKey {
		return rules.ColumnKey{Schema: n.Schema, Table: n.Name, Column: col}
	}
	strictest := p.Column(key(rel.Name))
	if strictest == nil {
		for _, a := range snap.Ancestors(rel) {
			if r := p.Column(key(a)); r != nil {
				strictest = r
				break
			}
		}
	}
	for _, d := range snap.Descendants(rel.Name) {
		if r := p.Column(key(d)); r != nil && (strictest == nil || stricter(g, r, strictest)) {
			strictest = r
		}
	}
	return strictest
}

// stricter reports whether rule a treats its column more strictly than b
// for a session with grants g.
func stricter(g *rules.Grants, a, b *rules.ColumnRule) bool {
	ta, tb := g.Treatment(a.Class.Name), g.Treatment(b.Class.Name)
	if ta != tb {
		return ta < tb
	}
	return ta == rules.TreatMask && a.Class.Mask.Kind == rules.MaskDeny && b.Class.Mask.Kind != rules.MaskDeny
}

// rowFilters returns the session's row filters on rel or its ancestors.
func (w *walker) rowFilters(rel *catalog.Relation) []string {
	var out []string
	names := map[catalog.Name]bool{rel.Name: true}
	for _, a := range w.s.Catalog.Ancestors(rel) {
		names[a] = true
	}
	for _, f := range w.s.Grants.RowFilters() {
		if names[catalog.Name{Schema: f.Schema, Name: f.Table}] {
			out = append(out, f.Where)
		}
	}
	return out
}

// protectedFor reports whether rel, read directly, would need masking for
// this session (classified columns it may not see raw, or row filters).
func (w *walker) protectedFor(rel *catalog.Relation) bool {
	if len(w.rowFilters(rel)) > 0 {
		return true
	}
	for _, c := range rel.Columns {
		if r := w.columnRule(rel, c.Name); r != nil && w.s.Grants.Treatment(r.Class.Name) == rules.TreatMask {
			return true
		}
	}
	return false
}

// projection returns the masking sub-query for rel, or nil when the
// session may read rel as it is, and the names of denied columns.
func (w *walker) projection(rel *catalog.Relation, inh bool) (string, []string, error) {
	key := projKey{policy: w.s.Policy.Hash, grants: w.s.Grants.Key(), catalog: w.s.Catalog.Version, oid: rel.OID, inh: inh}
	if w.s.projections != nil {
		if p, ok := w.s.projections.get(key); ok {
			return p.sql, p.denied, p.err
		}
	}
	sql, denied, err := w.buildProjection(rel, inh)
	switch err.(type) {
	case nil, *Refusal:
		if w.s.projections != nil {
			w.s.projections.put(key, projection{sql: sql, denied: denied, err: err})
		}
	}
	return sql, denied, err
}

// buildProjection builds the masking sub-query text for rel ("" when the
// session may read rel as it is) and the names of denied columns.
func (w *walker) buildProjection(rel *catalog.Relation, inh bool) (string, []string, error) {
	switch rel.Kind {
	case catalog.KindView, catalog.KindMatView:
		for _, r := range rel.Reads {
			if r.Schema == "pg_catalog" && statisticsRelations[r.Name] {
				return "", nil, refuse("statistics", "view %s reads %s, which exposes sampled column values", qualified(rel.Name), r.Name)
			}
		}
		classified := map[string]bool{}
		for _, c := range rel.Columns {
			if w.s.Policy.Column(rules.ColumnKey{Schema: rel.Name.Schema, Table: rel.Name.Name, Column: c.Name}) != nil {
				classified[c.Name] = true
			}
		}
		for _, r := range rel.Reads {
			rr := w.s.Catalog.Relation(r)
			if rr == nil || rr.Kind == catalog.KindView || rr.Kind == catalog.KindMatView {
				continue
			}
			// A row filter is on the table's rows, which the view's
			// projection cannot express: the view would show them all.
			for _, t := range append([]catalog.Name{r}, w.s.Catalog.Descendants(r)...) {
				if tr := w.s.Catalog.Relation(t); tr != nil && len(w.rowFilters(tr)) > 0 {
					return "", nil, refuse("view", "view %s reads %s, which has a row filter for this session", qualified(rel.Name), qualified(t))
				}
			}
			if !w.protectedFor(rr) {
				continue
			}
			if len(classified) == 0 {
				return "", nil, refuse("view", "view %s reads protected table %s and the policy does not classify its columns", qualified(rel.Name), qualified(r))
			}
			// A partly classified view: a column named like a protected
			// column of a table it reads must be classified too.
			for _, c := range rel.Columns {
				if classified[c.Name] {
					continue
				}
				if tr := w.columnRule(rr, c.Name); tr != nil && w.s.Grants.Treatment(tr.Class.Name) == rules.TreatMask {
					return "", nil, refuse("view", "view %s reads protected table %s, and the policy classifies some of the view's columns but not %q", qualified(rel.Name), qualified(r), c.Name)
				}
			}
		}
	case catalog.KindTable, catalog.KindPartitioned, catalog.KindForeignTable:
	default:
		// Sequences and composite types hold no classified data.
		return "", nil, nil
	}
	if !w.protectedFor(rel) {
		return "", nil, nil
	}
	var items []string
	var denied []string
	for _, c := range rel.Columns {
		id := quoteIdent(c.Name)
		r := w.columnRule(rel, c.Name)
		if r == nil || w.s.Grants.Treatment(r.Class.Name) != rules.TreatMask {
			items = append(items, id)
			continue
		}
		if r.Encrypted != nil && r.Class.Mask.Kind != rules.MaskDeny {
			// An encrypted column holds ciphertext, which masking in SQL
			// would only garble: it is projected as stored, and the proxy
			// decrypts then masks it in Go where a result column is a
			// direct reference to it (TransformDecryptMask); anywhere
			// else the session computes on ciphertext only.
			items = append(items, id)
			continue
		}
		expr, err := r.Class.Mask.SQL(id, c.Type)
		if errors.Is(err, rules.ErrMaskType) && c.BaseType != "" && c.BaseType != c.Type {
			// A domain: mask the value as its base type, then cast back,
			// so the column keeps its type (the domain's checks apply to
			// the masked value; a failing check is an error, not a leak).
			var inner string
			if inner, err = r.Class.Mask.SQL(id+"::"+c.BaseType, c.BaseType); err == nil {
				expr = "(" + inner + ")::" + c.Type
			}
		}
		if errors.Is(err, rules.ErrDenied) {
			expr, err = "NULL::"+c.Type, nil
			denied = append(denied, c.Name)
		}
		if err != nil {
			return "", nil, refuse("policy", "cannot mask %s.%s: %v", qualified(rel.Name), c.Name, err)
		}
		items = append(items, expr+" AS "+id)
	}
	var b strings.Builder
	b.WriteString("SELECT ")
	b.WriteString(strings.Join(items, ", "))
	b.WriteString(" FROM ")
	if !inh {
		b.WriteString("ONLY ")
	}
	b.WriteString(qualified(rel.Name))
	if f := w.rowFilters(rel); len(f) > 0 {
		b.WriteString(" WHERE (")
		b.WriteString(strings.Join(f, ") AND ("))
		b.WriteString(")")
	}
	tree, err := pg_query.Parse(b.String())
	if err != nil || len(tree.Stmts) != 1 {
		return "", nil, refuse("policy", "the masking query for %s does not parse: %v", qualified(rel.Name), err)
	}
	qualifyBuiltins(tree.ProtoReflect())
	out, err := pg_query.Deparse(tree)
	if err == nil {
		_, err = pg_query.Parse(out)
	}
	if err != nil {
		return "", nil, refuse("policy", "the masking query for %s cannot be serialised: %v", qualified(rel.Name), err)
	}
	return out, denied, nil
}

// qualifyBuiltins pins every function, operator and type of a masking
// sub-query to pg_catalog, so that no object created in a schema on the
// session's search_path can take their place (the masks use built-ins
// only).
func qualifyBuiltins(m protoreflect.Message) {
	switch x := m.Interface().(type) {
	case *pg_query.FuncCall:
		x.Funcname = pinned(x.Funcname)
	case *pg_query.A_Expr:
		if x.Kind == pg_query.A_Expr_Kind_AEXPR_OP {
			x.Name = pinned(x.Name)
		}
	case *pg_query.TypeName:
		x.Names = pinned(x.Names)
	}
	forEachChild(m, qualifyBuiltins)
}

// pinned prefixes an unqualified name list with pg_catalog.
func pinned(names []*pg_query.Node) []*pg_query.Node {
	if len(names) != 1 {
		return names
	}
	return append([]*pg_query.Node{pg_query.MakeStrNode("pg_catalog")}, names...)
}

// quoteIdent quotes an identifier for SQL text.
func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

func qualified(n catalog.Name) string { return quoteIdent(n.Schema) + "." + quoteIdent(n.Name) }

// deniedFunctions run SQL given as text, read server files or large
// objects, or change settings the proxy pins: masked sessions may not call
// them (DESIGN.md §2 rule 2).
var deniedFunctions = map[string]bool{}

func init() {
	for _, f := range strings.Fields(`
		query_to_xml query_to_xmlschema query_to_xml_and_xmlschema
		cursor_to_xml cursor_to_xmlschema
		table_to_xml table_to_xmlschema table_to_xml_and_xmlschema
		schema_to_xml schema_to_xmlschema schema_to_xml_and_xmlschema
		database_to_xml database_to_xmlschema database_to_xml_and_xmlschema
		ts_stat ts_rewrite
		pg_read_file pg_read_binary_file pg_ls_dir pg_stat_file pg_ls_logdir pg_ls_waldir
		pg_ls_tmpdir pg_ls_archive_statusdir pg_ls_logicalsnapdir pg_ls_logicalmapdir pg_ls_replslotdir
		lo_import lo_export lo_get lo_put lo_open lo_close loread lowrite lo_create lo_creat
		lo_unlink lo_from_bytea lo_lseek lo_lseek64 lo_tell lo_tell64 lo_truncate lo_truncate64
		dblink dblink_exec dblink_open dblink_fetch dblink_send_query dblink_get_result dblink_connect
		set_config pg_reload_conf pg_logical_emit_message
		pg_logical_slot_get_changes pg_logical_slot_peek_changes
		pg_logical_slot_get_binary_changes pg_logical_slot_peek_binary_changes
	`) {
		deniedFunctions[f] = true
	}
}

// operator allows only built-in operators: an operator is a function
// behind a symbol, resolved through search_path like one. Plain operators
// are pinned to pg_catalog; the others (LIKE, IN, BETWEEN, ...) cannot be
// written qualified and are checked only: BETWEEN by the operators it
// stands for (x >= a AND x <= b).
func (w *walker) operator(e *pg_query.A_Expr) error {
	switch e.Kind {
	case pg_query.A_Expr_Kind_AEXPR_BETWEEN, pg_query.A_Expr_Kind_AEXPR_NOT_BETWEEN,
		pg_query.A_Expr_Kind_AEXPR_BETWEEN_SYM, pg_query.A_Expr_Kind_AEXPR_NOT_BETWEEN_SYM:
		for _, op := range []string{">=", "<=", "<", ">"} {
			if _, err := w.operatorName([]*pg_query.Node{pg_query.MakeStrNode(op)}); err != nil {
				return err
			}
		}
		return nil
	}
	inCatalog, err := w.operatorName(e.Name)
	if err != nil {
		return err
	}
	if inCatalog {
		switch e.Kind {
		case pg_query.A_Expr_Kind_AEXPR_OP, pg_query.A_Expr_Kind_AEXPR_OP_ANY, pg_query.A_Expr_Kind_AEXPR_OP_ALL:
			e.Name = pinned(e.Name)
		}
	}
	return nil
}

// operatorName checks an operator name wherever one is resolved through
// search_path (an expression, x op ANY (subquery), ORDER BY ... USING op,
// and the equality CASE x WHEN, JOIN ... USING and NATURAL JOIN imply):
// every operator of that name on the path must be built in, and an
// unqualified name must name some operator the snapshot knows (else
// PostgreSQL may resolve it to one created since). inCatalog reports an
// unqualified name found in pg_catalog, which the caller may pin there.
func (w *walker) operatorName(names []*pg_query.Node) (inCatalog bool, err error) {
	var parts []string
	for _, n := range names {
		s := n.GetString_()
		if s == nil {
			return false, refuse("unsupported-syntax", "unexpected operator name")
		}
		parts = append(parts, s.Sval)
	}
	if len(parts) == 0 {
		return false, nil
	}
	name := parts[len(parts)-1]
	var candidates []*catalog.Function
	switch len(parts) {
	case 1:
		candidates = w.s.Catalog.ResolveFunctions(w.path(), name)
	case 2:
		candidates = w.s.Catalog.Functions(catalog.Name{Schema: parts[0], Name: name})
	default:
		return false, refuse("function", "operator %s is not allowed", strings.Join(parts, "."))
	}
	known := false
	for _, fn := range candidates {
		if fn.Kind != 'o' {
			continue
		}
		known = true
		if !fn.Builtin {
			return false, refuse("function", "operator %s.%s is not built in; masked sessions may use built-in operators only", fn.Name.Schema, name)
		}
		inCatalog = inCatalog || fn.Name.Schema == "pg_catalog"
	}
	if !known && len(parts) == 1 {
		return false, refuse("catalog", "operator %s is not known to pgveil (not in its catalog snapshot on this search_path); retry after the catalog refresh", name)
	}
	return len(parts) == 1 && inCatalog, nil
}

// funcCall allows only built-in functions that are not on the deny list.
func (w *walker) funcCall(f *pg_query.FuncCall) error {
	var parts []string
	for _, n := range f.Funcname {
		s := n.GetString_()
		if s == nil {
			return refuse("unsupported-syntax", "unexpected function name")
		}
		parts = append(parts, s.Sval)
	}
	if len(parts) == 0 {
		return refuse("unsupported-syntax", "unexpected function name")
	}
	name := parts[len(parts)-1]
	if deniedFunctions[name] || strings.HasPrefix(name, "dblink") {
		return refuse("function", "function %s is not allowed for masked sessions", name)
	}
	switch len(parts) {
	case 1:
		// An unqualified name must not resolve to a non-built-in function
		// that could read tables with its owner's rights, nor to one the
		// snapshot does not know yet (created since: it could be either).
		inCatalog, known := false, false
		for _, fn := range w.s.Catalog.ResolveFunctions(w.path(), name) {
			if fn.Kind == 'o' {
				continue
			}
			known = true
			if !fn.Builtin {
				return refuse("function", "function %s.%s is not built in; masked sessions may call built-in functions only", fn.Name.Schema, name)
			}
			inCatalog = inCatalog || fn.Name.Schema == "pg_catalog"
		}
		if !known {
			return refuse("catalog", "function %s is not known to pgveil (not in its catalog snapshot on this search_path); retry after the catalog refresh", name)
		}
		// Pin it to pg_catalog, so that a prepared statement re-analysed
		// under another search_path still calls the function checked.
		if inCatalog {
			f.Funcname = pinned(f.Funcname)
		}
	case 2:
		// Built-in means created by initdb: pg_catalog and
		// information_schema functions.
		if parts[0] != "pg_catalog" {
			fns := w.s.Catalog.Functions(catalog.Name{Schema: parts[0], Name: name})
			for _, fn := range fns {
				if !fn.Builtin {
					fns = nil
					break
				}
			}
			if len(fns) == 0 {
				return refuse("function", "function %s.%s is not built in; masked sessions may call built-in functions only", parts[0], name)
			}
		}
	default:
		return refuse("function", "function name %s is not allowed", strings.Join(parts, "."))
	}
	return nil
}
