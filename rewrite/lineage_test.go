package rewrite

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/pgveil/pgveil/catalog"
	"github.com/pgveil/pgveil/rules"
)

// lineageCases are statements with the column uses and output lineage
// they must get. Role dpo sees everything raw (analysed through Track);
// analyst and cardholder are masked sessions (analysed while rewritten).
// Uses render as "schema.table.column clauses treatment"; outputs as the
// source column or "-", with the transform when there is one.
var lineageCases = []struct {
	role, sql string
	uses      []string
	outputs   string
}{
	{"dpo", `SELECT * FROM customers WHERE id = 1`,
		[]string{"public.customers.birth_date output raw", "public.customers.city output raw", "public.customers.email output raw", "public.customers.id output|filter raw", "public.customers.name output raw", "public.customers.opted_out output raw", "public.customers.salary output raw", "public.customers.secret_note output raw", "public.customers.ssn output raw"},
		"[public.customers.id, public.customers.name, public.customers.email, public.customers.ssn, public.customers.birth_date, public.customers.salary, public.customers.city, public.customers.opted_out, public.customers.secret_note]"},
	{"analyst", `SELECT c.email, c FROM customers c`,
		[]string{"public.customers.birth_date output mask", "public.customers.city output raw", "public.customers.email output mask", "public.customers.id output raw", "public.customers.name output raw", "public.customers.opted_out output raw", "public.customers.salary output mask", "public.customers.secret_note output mask", "public.customers.ssn output mask"},
		"[public.customers.email, -]"},
	{"analyst", `SELECT x.a, x.c FROM customers AS x(a, b, c)`,
		[]string{"public.customers.email output mask", "public.customers.id output raw"},
		"[public.customers.id, public.customers.email]"},
	{"analyst", `WITH m AS (SELECT id, email AS e FROM customers) SELECT e FROM m WHERE id = 1`,
		[]string{"public.customers.email output mask", "public.customers.id filter raw"},
		"[public.customers.email]"},
	{"dpo", `WITH RECURSIVE r(n, e) AS (SELECT 1, email FROM customers UNION ALL SELECT n + 1, e FROM r WHERE n < 3) SELECT e, n FROM r`,
		[]string{"public.customers.email output raw"},
		"[public.customers.email, -]"},
	{"analyst", `SELECT s.e FROM (SELECT email AS e, ssn FROM customers) s`,
		[]string{"public.customers.email output mask", "public.customers.ssn other mask"},
		"[public.customers.email]"},
	{"analyst", `SELECT c.id, l.amount FROM customers c, LATERAL (SELECT amount FROM orders o WHERE o.customer_id = c.id AND c.salary > 1) l`,
		[]string{"public.customers.id output|filter raw", "public.customers.salary filter mask", "public.orders.amount output raw", "public.orders.customer_id filter raw"},
		"[public.customers.id, public.orders.amount]"},
	{"analyst", `SELECT email FROM customers UNION SELECT email FROM customers`,
		[]string{"public.customers.email output mask"},
		"[public.customers.email]"},
	{"analyst", `SELECT email FROM customers UNION SELECT 'x'`,
		[]string{"public.customers.email output mask"},
		"[-]"},
	{"analyst", `SELECT email FROM customers UNION SELECT ssn FROM customers`,
		[]string{"public.customers.email output mask", "public.customers.ssn output mask"},
		"[-]"},
	{"analyst", `SELECT * FROM orders JOIN payments USING (id)`,
		[]string{"public.orders.amount output raw", "public.orders.created_at output raw", "public.orders.customer_id output raw", "public.orders.id output|join raw", "public.payments.card_number output mask", "public.payments.customer_id output raw", "public.payments.id join raw"},
		"[public.orders.id, public.orders.customer_id, public.orders.amount, public.orders.created_at, public.payments.customer_id, public.payments.card_number]"},
	{"analyst", `SELECT * FROM orders NATURAL JOIN payments`,
		[]string{"public.orders.amount output raw", "public.orders.created_at output raw", "public.orders.customer_id output|join raw", "public.orders.id output|join raw", "public.payments.card_number output mask", "public.payments.customer_id join raw", "public.payments.id join raw"},
		"[public.orders.id, public.orders.customer_id, public.orders.amount, public.orders.created_at, public.payments.card_number]"},
	{"analyst", `SELECT * FROM orders FULL JOIN payments USING (id)`,
		[]string{"public.orders.amount output raw", "public.orders.created_at output raw", "public.orders.customer_id output raw", "public.orders.id output|join raw", "public.payments.card_number output mask", "public.payments.customer_id output raw", "public.payments.id output|join raw"},
		"[-, public.orders.customer_id, public.orders.amount, public.orders.created_at, public.payments.customer_id, public.payments.card_number]"},
	{"dpo", `SELECT * FROM customer_emails`,
		[]string{"public.customers.birth_date output raw", "public.customers.email output raw", "public.customers.id output raw", "public.customers.salary output raw", "public.customers.secret_note output raw", "public.customers.ssn output raw"},
		"[-, -]"},
	{"dpo", `SELECT * FROM masked_ok`,
		[]string{"public.masked_ok.email output raw", "public.masked_ok.id output raw"},
		"[public.masked_ok.id, public.masked_ok.email]"},
	{"analyst", `SELECT * FROM masked_ok`,
		[]string{"public.masked_ok.email output mask", "public.masked_ok.id output raw"},
		"[public.masked_ok.id, public.masked_ok.email]"},
	{"analyst", `SELECT row_to_json(c) FROM customers c`,
		[]string{"public.customers.birth_date output mask", "public.customers.city output raw", "public.customers.email output mask", "public.customers.id output raw", "public.customers.name output raw", "public.customers.opted_out output raw", "public.customers.salary output mask", "public.customers.secret_note output mask", "public.customers.ssn output mask"},
		"[-]"},
	{"analyst", `SELECT city, max(salary), count(*) FROM customers GROUP BY city HAVING min(birth_date) > '2000-01-01' ORDER BY 2`,
		[]string{"public.customers.birth_date filter|aggregate-arg mask", "public.customers.city output|group-order raw", "public.customers.salary output|group-order|aggregate-arg mask"},
		"[public.customers.city, -, -]"},
	{"analyst", `SELECT id, rank() OVER (PARTITION BY city ORDER BY salary), sum(salary) OVER w FROM customers WINDOW w AS (ORDER BY birth_date)`,
		[]string{"public.customers.birth_date group-order mask", "public.customers.city group-order raw", "public.customers.id output raw", "public.customers.salary output|group-order|aggregate-arg mask"},
		"[public.customers.id, -, -]"},
	{"analyst", `SELECT DISTINCT ON (city) city, id FROM customers ORDER BY city, ssn`,
		[]string{"public.customers.city output|group-order raw", "public.customers.id output raw", "public.customers.ssn group-order mask"},
		"[public.customers.city, public.customers.id]"},
	{"analyst", `INSERT INTO orders (id, amount) SELECT id, salary FROM customers RETURNING id, amount`,
		[]string{"public.customers.id write-source raw", "public.customers.salary write-source mask", "public.orders.amount output|write-target raw", "public.orders.id output|write-target raw"},
		"[public.orders.id, public.orders.amount]"},
	{"dpo", `INSERT INTO customers (id, name, email) VALUES (9, 'x', 'y') ON CONFLICT (id) DO UPDATE SET email = excluded.email WHERE customers.ssn IS NULL RETURNING ssn`,
		[]string{"public.customers.email write-target|write-source raw", "public.customers.id filter|write-target raw", "public.customers.name write-target raw", "public.customers.ssn output|filter raw"},
		"[public.customers.ssn]"},
	{"analyst", `UPDATE orders o SET amount = c.salary FROM customers c WHERE o.customer_id = c.id RETURNING o.*`,
		[]string{"public.customers.id filter raw", "public.customers.salary write-source mask", "public.orders.amount output|write-target raw", "public.orders.created_at output raw", "public.orders.customer_id output|filter raw", "public.orders.id output raw"},
		"[public.orders.id, public.orders.customer_id, public.orders.amount, public.orders.created_at]"},
	{"dpo", `DELETE FROM customers WHERE ssn = '1' RETURNING email, ssn::text`,
		[]string{"public.customers.email output raw", "public.customers.ssn output|filter raw"},
		"[public.customers.email, -]"},
	{"analyst", `COPY customers (id, email) TO STDOUT`,
		[]string{"public.customers.email output mask", "public.customers.id output raw"},
		"[public.customers.id, public.customers.email]"},
	{"analyst", `COPY (SELECT email FROM customers ORDER BY ssn) TO STDOUT`,
		[]string{"public.customers.email output mask", "public.customers.ssn group-order mask"},
		"[public.customers.email]"},
	{"dpo", `COPY customers (id, email) FROM STDIN WHERE ssn IS NULL`,
		[]string{"public.customers.email write-target raw", "public.customers.id write-target raw", "public.customers.ssn filter raw"},
		"[]"},
	{"analyst", `DECLARE c CURSOR FOR SELECT email FROM customers`,
		[]string{"public.customers.email output mask"},
		"[public.customers.email]"},
	{"analyst", `PREPARE p AS SELECT ssn FROM customers WHERE id = $1`,
		[]string{"public.customers.id filter raw", "public.customers.ssn output mask"},
		"[public.customers.ssn]"},
	{"analyst", `SELECT email::text, upper(email), coalesce(email, ''), 1, (SELECT email FROM customers LIMIT 1) FROM customers`,
		[]string{"public.customers.email output mask"},
		"[-, -, -, -, -]"},
	{"analyst", `SELECT * FROM cards`,
		[]string{"public.cards.customer_id output raw", "public.cards.cvv output mask", "public.cards.holder output raw", "public.cards.id output raw", "public.cards.pan output mask", "public.cards.token output mask"},
		"[public.cards.id, public.cards.customer_id, public.cards.pan decrypt-mask, public.cards.cvv, public.cards.holder, public.cards.token decrypt-mask]"},
	{"cardholder", `SELECT * FROM cards`,
		[]string{"public.cards.customer_id output raw", "public.cards.cvv output mask", "public.cards.holder output raw", "public.cards.id output raw", "public.cards.pan output decrypt", "public.cards.token output decrypt"},
		"[public.cards.id, public.cards.customer_id, public.cards.pan decrypt, public.cards.cvv, public.cards.holder, public.cards.token decrypt]"},
	{"cardholder", `SELECT upper(pan), pan::varchar, (SELECT pan FROM cards LIMIT 1) FROM cards`,
		[]string{"public.cards.pan output decrypt"},
		"[-, -, -]"},
	{"dpo", `SELECT * FROM card_holders`,
		[]string{"public.cards.cvv output raw", "public.cards.holder output raw", "public.cards.id output raw", "public.cards.pan output raw", "public.cards.token output raw"},
		"[-, -, -]"},
	{"analyst", `SELECT pan FROM cards UNION ALL SELECT pan FROM cards`,
		[]string{"public.cards.pan output mask"},
		"[public.cards.pan decrypt-mask]"},
	{"analyst", `SELECT pan FROM cards UNION ALL SELECT holder FROM cards`,
		[]string{"public.cards.holder output raw", "public.cards.pan output mask"},
		"[-]"},
	{"analyst", `SELECT * FROM events_2024`,
		[]string{"public.events.at output raw", "public.events.customer_email output mask", "public.events.id output raw"},
		"[public.events.id, public.events.customer_email, public.events.at]"},
	{"analyst", `SELECT * FROM generate_series(1,2) g, customers`,
		[]string{"public.customers.birth_date output mask", "public.customers.city output raw", "public.customers.email output mask", "public.customers.id output raw", "public.customers.name output raw", "public.customers.opted_out output raw", "public.customers.salary output mask", "public.customers.secret_note output mask", "public.customers.ssn output mask"},
		"unknown"},
	{"analyst", `SELECT g, email FROM generate_series(1,2) g, customers`,
		[]string{"public.customers.email output mask"},
		"[-, public.customers.email]"},
	{"dpo", `SELECT id FROM customers c WHERE EXISTS (SELECT * FROM orders WHERE customer_id = c.id) AND email IN (SELECT customer_email FROM events)`,
		[]string{"public.customers.email filter raw", "public.customers.id output|filter raw", "public.events.customer_email filter raw", "public.orders.customer_id filter raw"},
		"[public.customers.id]"},
	{"dpo", `SELECT t.id FROM customers t JOIN vip_customers v ON v.id = t.id`,
		[]string{"public.customers.id output|join raw", "public.vip_customers.id join raw"},
		"[public.customers.id]"},
	{"dpo", `CREATE VIEW v AS SELECT ssn FROM customers`,
		[]string{"public.customers.ssn other raw"},
		"[]"},
	{"dpo", `SELECT count(*) FROM (SELECT * FROM customers) s`,
		[]string{"public.customers.birth_date other raw", "public.customers.city other raw", "public.customers.email other raw", "public.customers.id other raw", "public.customers.name other raw", "public.customers.opted_out other raw", "public.customers.salary other raw", "public.customers.secret_note other raw", "public.customers.ssn other raw"},
		"[-]"},
	{"dpo", `SELECT email, name FROM customers c, crm.customers c2`,
		[]string{"crm.customers.email output raw", "public.customers.email output raw", "public.customers.name output raw"},
		"[-, public.customers.name]"},
	{"dpo", `SELECT nosuch FROM customers`,
		[]string{},
		"[-]"},
}

// trackedSession is the session a lineage case runs in: raw sessions ask
// for tracking.
func trackedSession(t testing.TB, role string) *Session {
	s := session(t, caseHeader{roles: []string{role}, searchPath: []string{"$user", "public"}})
	s.Track = s.Grants.AllRaw()
	return s
}

func TestLineageAttribution(t *testing.T) {
	if fx == nil {
		t.Skip("PostgreSQL not installed")
	}
	cases := lineageCases
	// Every masked case also runs in the raw session dpo: the same
	// columns and clauses, every treatment raw, no transform.
	raw := strings.NewReplacer(" mask", " raw", " decrypt", " raw")
	for _, c := range lineageCases {
		if c.role == "dpo" {
			continue
		}
		var uses []string
		for _, u := range c.uses {
			uses = append(uses, raw.Replace(u))
		}
		outputs := strings.NewReplacer(" decrypt-mask", "", " decrypt", "").Replace(c.outputs)
		cases = append(cases, struct {
			role, sql string
			uses      []string
			outputs   string
		}{"dpo", c.sql, uses, outputs})
	}
	for _, c := range cases {
		t.Run(c.role+"/"+c.sql, func(t *testing.T) {
			s := trackedSession(t, c.role)
			plan, err := Rewrite(c.sql, s)
			if err != nil {
				t.Fatalf("%s: %v", c.role, err)
			}
			if !plan.Analyzed || len(plan.Statements) != 1 {
				t.Fatalf("not analysed: %+v", plan)
			}
			if plan.Rewritten == s.Grants.AllRaw() {
				t.Fatalf("rewritten %v for a session with AllRaw %v", plan.Rewritten, s.Grants.AllRaw())
			}
			if !plan.Rewritten && plan.SQL != c.sql {
				t.Fatalf("raw session's SQL changed: %q", plan.SQL)
			}
			st := plan.Statements[0]
			var uses []string
			for _, u := range st.Uses {
				uses = append(uses, renderUse(u))
			}
			if strings.Join(uses, "\n") != strings.Join(c.uses, "\n") {
				t.Errorf("uses:\n%s\nwant:\n%s", strings.Join(uses, "\n"), strings.Join(c.uses, "\n"))
			}
			if got := renderOutputs(st); got != c.outputs {
				t.Errorf("outputs %s, want %s", got, c.outputs)
			}
			// Analyze, which never rewrites, finds the same facts.
			an, err := Analyze(c.sql, s)
			if err != nil || an.SQL != c.sql || an.Rewritten {
				t.Fatalf("Analyze: %v %+v", err, an)
			}
			if renderFacts(an) != renderFacts(plan) {
				t.Errorf("Analyze differs:\n%s\nRewrite:\n%s", renderFacts(an), renderFacts(plan))
			}
		})
	}
}

// renderOutputs renders a statement's outputs as "[a, b]" or "unknown".
func renderOutputs(st Statement) string {
	if !st.OutputsKnown {
		return "unknown"
	}
	var outs []string
	for _, o := range st.Outputs {
		outs = append(outs, renderOutput(o))
	}
	return "[" + strings.Join(outs, ", ") + "]"
}

// describe prepares sql on the fixture server (never executing it) with
// the case's search_path and returns its result columns' origins: table
// OID and attribute number (zero when the column is not a plain column
// reference; PostgreSQL's markTargetListOrigins, src/backend/parser/
// analyze.c, follows sub-queries, CTEs and views to the base column).
func describe(t *testing.T, searchPath []string, sql string) ([][2]uint32, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tx, err := fx.conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var path []string
	for _, s := range searchPath {
		path = append(path, `"`+s+`"`)
	}
	if _, err := tx.Exec(ctx, "SET LOCAL search_path = "+strings.Join(path, ", ")); err != nil {
		t.Fatal(err)
	}
	sd, err := tx.Conn().PgConn().Prepare(ctx, "", sql, nil)
	if err != nil {
		return nil, err
	}
	var out [][2]uint32
	for _, f := range sd.Fields {
		out = append(out, [2]uint32{f.TableOID, uint32(f.TableAttributeNumber)})
	}
	return out, nil
}

// lineageTexts returns the lineage cases' texts and every golden input.
func lineageTexts(t *testing.T) []string {
	var texts []string
	for _, c := range lineageCases {
		texts = append(texts, c.sql)
	}
	files, err := filepath.Glob("testdata/cases/*/input.sql")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		texts = append(texts, string(b))
	}
	return texts
}

// TestOutputsAgainstServer checks the output lineage of a raw session
// against the server's own: for every text that is one statement the
// server can describe, the number of result columns agrees, and every
// Source is the column the server names as the result column's origin
// (mapped to the name the policy uses: a partition's parent), except
// across set operations, which the server does not follow.
func TestOutputsAgainstServer(t *testing.T) {
	if fx == nil {
		t.Skip("PostgreSQL not installed")
	}
	s := trackedSession(t, "dpo")
	a := newAnalyzer(s)
	described, sources, serverOnly := 0, 0, 0
	for _, sql := range lineageTexts(t) {
		tree, err := pg_query.Parse(sql)
		if err != nil || len(tree.Stmts) != 1 {
			continue
		}
		switch tree.Stmts[0].Stmt.GetNode().(type) {
		case *pg_query.Node_SelectStmt, *pg_query.Node_InsertStmt, *pg_query.Node_UpdateStmt, *pg_query.Node_DeleteStmt:
		default:
			continue
		}
		plan, err := Analyze(sql, s)
		if err != nil || !plan.Analyzed || len(plan.Statements) != 1 {
			t.Fatalf("%s: %v", sql, err)
		}
		st := plan.Statements[0]
		setOp := strings.Contains(tree.String(), "SETOP_UNION") || strings.Contains(tree.String(), "SETOP_INTERSECT") || strings.Contains(tree.String(), "SETOP_EXCEPT")
		origins, err := describe(t, s.SearchPath, sql)
		if err != nil {
			continue // the server rejects it (a case of a refusal or error)
		}
		described++
		if !st.OutputsKnown {
			continue
		}
		if len(st.Outputs) != len(origins) {
			t.Errorf("%s: %d outputs, the server describes %d", sql, len(st.Outputs), len(origins))
			continue
		}
		for i, o := range st.Outputs {
			orig := origins[i]
			if o.Source == nil {
				if orig[0] != 0 {
					serverOnly++
					t.Logf("not claimed: %s: output %d", sql, i)
				}
				continue
			}
			sources++
			rel := fx.snap.RelationByOID(orig[0])
			if rel == nil && setOp {
				// The server does not follow set operations; the
				// analysis does when every branch is the same column.
				continue
			}
			if rel == nil {
				t.Errorf("%s: output %d has source %v, the server none", sql, i, *o.Source)
				continue
			}
			var col *catalog.Column
			for j := range rel.Columns {
				if uint32(rel.Columns[j].Num) == orig[1] {
					col = &rel.Columns[j]
				}
			}
			if col == nil {
				t.Errorf("%s: output %d: the server's origin is a system column", sql, i)
				continue
			}
			// The server names a view's own column (views are expanded
			// after parse analysis), as the analysis does for views the
			// policy classifies.
			want := rules.ColumnKey{Schema: rel.Name.Schema, Table: rel.Name.Name, Column: col.Name}
			if rel.Kind != catalog.KindView && rel.Kind != catalog.KindMatView {
				want = a.baseColumn(rel, col.Name).deps[0].key
			}
			if *o.Source != want {
				t.Errorf("%s: output %d has source %v, the server's origin is %v", sql, i, *o.Source, want)
			}
		}
	}
	// The comparison must have had something to compare.
	if described < 100 || sources < 100 {
		t.Fatalf("only %d statements described and %d sources compared", described, sources)
	}
	t.Logf("%d statements described, %d sources agree, %d server origins the analysis does not claim", described, sources, serverOnly)
}

// TestMaskedOutputsAgainstServer checks that the rewritten SQL of every
// golden case returns as many columns as Outputs lists.
func TestMaskedOutputsAgainstServer(t *testing.T) {
	if fx == nil {
		t.Skip("PostgreSQL not installed")
	}
	files, _ := filepath.Glob("testdata/cases/*/input.sql")
	checked := 0
	for _, f := range files {
		b, _ := os.ReadFile(f)
		h := parseHeader(string(b))
		s := session(t, h)
		plan, err := Rewrite(string(b), s)
		if err != nil || !plan.Rewritten || len(plan.Statements) != 1 || !plan.Statements[0].OutputsKnown {
			continue
		}
		switch plan.Statements[0].Kind {
		case "SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt":
		default:
			continue
		}
		origins, err := describe(t, h.searchPath, plan.SQL)
		if err != nil {
			continue
		}
		checked++
		if len(origins) != len(plan.Statements[0].Outputs) {
			t.Errorf("%s: %d outputs, the rewritten statement returns %d columns", f, len(plan.Statements[0].Outputs), len(origins))
		}
	}
	if checked < 80 {
		t.Fatalf("only %d rewritten statements checked", checked)
	}
}

// TestAnalyzeRawSession checks the analysis of raw sessions: nothing is
// refused, the text is never changed, unparseable text yields no facts,
// and later statements of a text see what earlier ones set.
func TestAnalyzeRawSession(t *testing.T) {
	if fx == nil {
		t.Skip("PostgreSQL not installed")
	}
	s := trackedSession(t, "dpo")
	if !s.Grants.AllRaw() {
		t.Fatal("dpo is expected to see everything raw")
	}
	// Unparseable text: no error, no facts, the text as it was.
	bad := "SELEC email FRM customers; -- é\n"
	for _, f := range []func(string, *Session) (*Plan, error){Analyze, Rewrite} {
		p, err := f(bad, s)
		if err != nil || p.SQL != bad || p.Analyzed || p.Rewritten || len(p.Statements) != 0 {
			t.Fatalf("unparseable: %+v %v", p, err)
		}
	}
	// DDL, DO, CALL and writes a masked session may not run all pass,
	// byte for byte.
	text := "DROP TABLE IF EXISTS x;\n  DO $$ BEGIN PERFORM 1; END $$ ;CREATE TABLE t2 AS SELECT ssn FROM customers;" +
		"UPDATE customers SET ssn = '1' WHERE email LIKE '%x' RETURNING ssn; LISTEN ch; EXPLAIN SELECT email FROM customers"
	p, err := Rewrite(text, s)
	if err != nil || p.SQL != text || p.Rewritten || !p.Analyzed {
		t.Fatalf("%+v %v", p, err)
	}
	var kinds []string
	for _, st := range p.Statements {
		kinds = append(kinds, st.Kind)
	}
	if got := strings.Join(kinds, " "); got != "DropStmt DoStmt CreateTableAsStmt UpdateStmt ListenStmt ExplainStmt" {
		t.Fatalf("kinds %s", got)
	}
	if got := renderFacts(p); !strings.Contains(got, "use public.customers.ssn write-source raw") ||
		!strings.Contains(got, "use public.customers.ssn output|write-target raw") ||
		!strings.Contains(got, "use public.customers.email filter raw") {
		t.Fatalf("facts:\n%s", got)
	}
	// search_path and role set by one statement apply to the next; the
	// names DECLARE, FETCH, PREPARE and EXECUTE use are reported.
	p, err = Analyze("SET search_path = crm; SELECT email FROM customers; RESET search_path; SELECT email FROM public.customers;"+
		"DECLARE c CURSOR FOR SELECT email FROM customers; FETCH 2 FROM c; PREPARE q AS SELECT 1; EXECUTE q", s)
	if err != nil {
		t.Fatal(err)
	}
	sts := p.Statements
	if src := sts[1].Outputs[0].Source; src == nil || src.Schema != "crm" {
		t.Fatalf("search_path not followed: %v", src)
	}
	if !sts[2].ResetSearchPath || sts[3].Outputs[0].Source.Schema != "public" {
		t.Fatalf("reset: %+v", sts[2:4])
	}
	// After RESET the path is unknown: the unqualified name resolves to
	// nothing, so the cursor's column has no source.
	if sts[4].Declares != "c" || sts[4].Outputs[0].Source != nil || sts[5].Fetches != "c" || sts[5].OutputsKnown {
		t.Fatalf("cursor: %+v %+v", sts[4], sts[5])
	}
	if sts[6].Prepares != "q" || sts[7].Executes != "q" || sts[7].OutputsKnown {
		t.Fatalf("prepare: %+v %+v", sts[6], sts[7])
	}
}

// TestCacheTrack checks that the plan cache keys tracking and returns
// immutable, shared plans.
func TestCacheTrack(t *testing.T) {
	if fx == nil {
		t.Skip("PostgreSQL not installed")
	}
	c := NewCache(16)
	// A policy without encrypted columns: raw sessions are analysed only
	// when tracked.
	plain, err := rules.Parse("plain.yaml", []byte("version: 1\nclasses:\n  email: { mask: email }\ncolumns:\n  public.customers.email: email\nroles:\n  dpo: { raw: all }\n"))
	if err != nil {
		t.Fatal(err)
	}
	g, err := plain.Grants([]string{"dpo"})
	if err != nil || !g.AllRaw() {
		t.Fatal(err)
	}
	raw := &Session{Policy: plain, Grants: g, Catalog: fx.snap, SearchPath: []string{"$user", "public"}, User: "dpo", Track: true}
	untracked := *raw
	untracked.Track = false
	const sql = "SELECT email FROM customers"
	p1, err := c.Rewrite(sql, &untracked)
	if err != nil || p1.Analyzed || len(p1.Statements) != 0 {
		t.Fatalf("untracked: %+v %v", p1, err)
	}
	p2, err := c.Rewrite(sql, raw)
	if err != nil || !p2.Analyzed || len(p2.Statements[0].Uses) != 1 || p2.SQL != sql {
		t.Fatalf("tracked: %+v %v", p2, err)
	}
	if p3, _ := c.Rewrite(sql, raw); p3 != p2 {
		t.Fatal("tracked plan not cached")
	}
	if p4, _ := c.Rewrite(sql, &untracked); p4 != p1 {
		t.Fatal("untracked plan not cached apart from the tracked one")
	}
	// With encrypted columns in the policy, a raw session's text is
	// always analysed (values stored into them must be encrypted).
	encRaw := trackedSession(t, "dpo")
	encRaw.Track = false
	if p, err := c.Rewrite(sql, encRaw); err != nil || !p.Analyzed || p.SQL != sql {
		t.Fatalf("raw session, encrypted policy: %+v %v", p, err)
	}
	// Masked sessions are analysed whether or not Track is set, under one
	// key.
	m := trackedSession(t, "analyst")
	m2 := *m
	m2.Track = true
	if KeyFor(m, sql) != KeyFor(&m2, sql) {
		t.Fatal("Track splits the keys of a masked session")
	}
	pm, err := c.Rewrite(sql, m)
	if err != nil || !pm.Analyzed || !pm.Rewritten || pm.Statements[0].Uses[0].Treatment != rules.TreatMask {
		t.Fatalf("masked: %+v %v", pm, err)
	}
}

// BenchmarkAnalysis measures a cache miss of a masked session (parse,
// analysis, rewrite, deparse), the lineage analysis alone (its extra cost
// in that miss), a raw session's Analyze (parse and analysis), and cache
// hits, which parse nothing.
func BenchmarkAnalysis(b *testing.B) {
	if fx == nil {
		b.Skip("PostgreSQL not installed")
	}
	const sql = "SELECT c.id, c.email, o.amount FROM customers c JOIN orders o ON o.customer_id = c.id WHERE c.city = $1 ORDER BY c.ssn"
	masked := trackedSession(b, "analyst")
	raw := trackedSession(b, "dpo")
	b.Run("masked-miss", func(b *testing.B) {
		// A distinct text each time: parse, analyse, rewrite, deparse,
		// with the masking sub-queries cached as in the proxy.
		c := NewCache(1)
		for i := 0; i < b.N; i++ {
			if _, err := c.Rewrite(sql+" -- "+strconv.Itoa(i), masked); err != nil {
				b.Fatal(err)
			}
		}
	})
	tree, err := pg_query.Parse(sql)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("analysis-only", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			var st Statement
			analyzeStatement(tree.Stmts[0].Stmt, masked, &st, nil)
		}
	})
	b.Run("raw-analyze", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, err := Analyze(sql, raw); err != nil {
				b.Fatal(err)
			}
		}
	})
	c := NewCache(0)
	for _, s := range []*Session{masked, raw} {
		if _, err := c.Rewrite(sql, s); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("masked-hit", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			_, _ = c.Rewrite(sql, masked)
		}
	})
	b.Run("raw-tracked-hit", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			_, _ = c.Rewrite(sql, raw)
		}
	})
}

// TestCacheHitDoesNotParse checks that a cache hit, tracked or masked,
// costs no analysis: a parse alone allocates hundreds of times.
func TestCacheHitDoesNotParse(t *testing.T) {
	if fx == nil {
		t.Skip("PostgreSQL not installed")
	}
	c := NewCache(0)
	const sql = "SELECT c.id, c.email FROM customers c WHERE c.city = $1"
	for _, role := range []string{"dpo", "analyst"} {
		s := trackedSession(t, role)
		if _, err := c.Rewrite(sql, s); err != nil {
			t.Fatal(err)
		}
		allocs := testing.AllocsPerRun(100, func() { _, _ = c.Rewrite(sql, s) })
		if allocs > 4 {
			t.Fatalf("%s: a cache hit allocates %.0f times", role, allocs)
		}
	}
}
