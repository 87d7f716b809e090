package rewrite

import (
	"fmt"
	"strings"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// renderEncrypt renders a statement's encryption facts.
func renderEncrypt(st Statement) string {
	var parts []string
	for _, e := range st.Encrypt {
		s := e.Column.Table + "." + e.Column.Column + " "
		if e.Param > 0 {
			s += fmt.Sprintf("$%d", e.Param)
		} else {
			s += e.Placeholder + "=" + e.Literal
		}
		if e.Compare {
			s += " compare"
		}
		parts = append(parts, s)
	}
	for _, c := range st.CopyEncrypt {
		parts = append(parts, fmt.Sprintf("copy[%d] %s.%s", c.Index, c.Column.Table, c.Column.Column))
	}
	return strings.Join(parts, "; ")
}

// TestEncryptionWritePath checks what the proxy is told to encrypt, for
// raw (dpo) and masked (cardholder decrypts cards, analyst does not)
// sessions, and what is refused. sql is the expected text sent ("" when
// it is the client's, unchanged); refused a substring of the refusal.
func TestEncryptionWritePath(t *testing.T) {
	if fx == nil {
		t.Skip("PostgreSQL not installed")
	}
	cases := []struct {
		role, in, sql, encrypt, refused string
	}{
		// INSERT: single and multi-row VALUES, parameters and literals.
		{"dpo", `INSERT INTO cards (id, pan) VALUES (1, $1)`, "", "cards.pan $1", ""},
		{"dpo", `INSERT INTO cards (id, pan, token) VALUES (1, $1, $2), (2, '4111', NULL)`,
			`INSERT INTO cards (id, pan, token) VALUES (1, $1, $2), (2, 'pgveil_subst_lit_0', NULL)`,
			"cards.pan 'pgveil_subst_lit_0'=4111; cards.pan $1; cards.token $2", ""},
		{"dpo", `INSERT INTO cards VALUES (1, 2, '4111'::text, DEFAULT, 'Ada', NULL)`,
			`INSERT INTO cards VALUES (1, 2, 'pgveil_subst_lit_0'::text, DEFAULT, 'Ada', NULL)`,
			"cards.pan 'pgveil_subst_lit_0'=4111", ""},
		{"dpo", `INSERT INTO cards (id, pan) SELECT 1, $1`, "", "cards.pan $1", ""},
		{"dpo", `INSERT INTO cards (id, pan) SELECT id, pan FROM cards`, "", "", ""},
		{"dpo", `WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) INSERT INTO cards (id, pan) SELECT n, $1 FROM r`, "", "cards.pan $1", ""},
		{"dpo", `INSERT INTO cards (id, pan) SELECT id, token FROM cards`, "", "", "reads a plaintext or computed source"},
		{"dpo", `INSERT INTO cards (id, pan) SELECT id, email FROM customers`, "", "", "reads a plaintext or computed source"},
		{"dpo", `INSERT INTO cards (id, pan) VALUES (1, upper($1))`, "", "", "must be a parameter, a literal"},
		{"dpo", `INSERT INTO cards (id, pan) VALUES ($1, $1)`, "", "", "parameter $1 is used both"},
		{"dpo", `INSERT INTO cards (id, pan, token) VALUES (1, $1, $1)`, "", "", "different keys"},
		// ON CONFLICT ... DO UPDATE SET.
		{"dpo", `INSERT INTO cards (id, pan) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET pan = excluded.pan, holder = 'x'`, "", "cards.pan $1", ""},
		{"dpo", `INSERT INTO cards (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET pan = 'lit'`,
			`INSERT INTO cards (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET pan = 'pgveil_subst_lit_0'`,
			"cards.pan 'pgveil_subst_lit_0'=lit", ""},
		// UPDATE SET, including multiple assignment.
		{"dpo", `UPDATE cards SET pan = $2, holder = $3 WHERE id = $1`, "", "cards.pan $2", ""},
		{"dpo", `UPDATE cards SET (pan, holder) = ('4111', 'x') WHERE id = 1`,
			`UPDATE cards SET (pan, holder) = ('pgveil_subst_lit_0', 'x') WHERE id = 1`,
			"cards.pan 'pgveil_subst_lit_0'=4111", ""},
		{"dpo", `UPDATE cards SET (holder, pan) = ('x', '4111') WHERE id = 1`,
			`UPDATE cards SET (holder, pan) = ('x', 'pgveil_subst_lit_0') WHERE id = 1`,
			"cards.pan 'pgveil_subst_lit_0'=4111", ""},
		{"dpo", `UPDATE cards SET (holder, pan) = ($1, $2) WHERE id = 1`, "", "cards.pan $2", ""},
		{"dpo", `UPDATE cards SET pan = pan || 'x'`, "", "", "must be a parameter, a literal"},
		{"dpo", `UPDATE cards SET (pan, holder) = (SELECT pan, holder FROM cards LIMIT 1)`, "", "", "must be assigned a parameter or a literal"},
		// MERGE.
		{"dpo", `MERGE INTO cards c USING orders o ON c.id = o.id WHEN MATCHED THEN UPDATE SET pan = $1 WHEN NOT MATCHED THEN INSERT (id, pan) VALUES (o.id, '4111')`,
			`MERGE INTO cards c USING orders o ON c.id = o.id WHEN MATCHED THEN UPDATE SET pan = $1 WHEN NOT MATCHED THEN INSERT (id, pan) VALUES (o.id, 'pgveil_subst_lit_0')`,
			"cards.pan 'pgveil_subst_lit_0'=4111; cards.pan $1", ""},
		// Searchable equality: only for sessions that decrypt the column.
		{"cardholder", `SELECT id, pan FROM cards WHERE token = $1`,
			`SELECT id, pan FROM (SELECT id, customer_id, pan, NULL::pg_catalog.text AS cvv, holder, token FROM public.cards) cards WHERE token OPERATOR(pg_catalog.=) $1`,
			"cards.token $1 compare", ""},
		{"cardholder", `SELECT id FROM cards WHERE 'tok' = token OR token IN ($1, 'x') OR token IS NULL`,
			`SELECT id FROM (SELECT id, customer_id, pan, NULL::pg_catalog.text AS cvv, holder, token FROM public.cards) cards WHERE 'pgveil_subst_lit_0' OPERATOR(pg_catalog.=) token OR token IN ($1, 'pgveil_subst_lit_1') OR token IS NULL`,
			"cards.token 'pgveil_subst_lit_0'=tok compare; cards.token 'pgveil_subst_lit_1'=x compare; cards.token $1 compare", ""},
		{"cardholder", `WITH RECURSIVE r(n, p) AS (SELECT 1, pan FROM cards WHERE token = 'x' UNION ALL SELECT n + 1, p FROM r WHERE n < 3) SELECT * FROM r`,
			`WITH RECURSIVE r(n, p) AS (SELECT 1, pan FROM (SELECT id, customer_id, pan, NULL::pg_catalog.text AS cvv, holder, token FROM public.cards) cards WHERE token OPERATOR(pg_catalog.=) 'pgveil_subst_lit_0' UNION ALL SELECT n OPERATOR(pg_catalog.+) 1, p FROM r WHERE n OPERATOR(pg_catalog.<) 3) SELECT * FROM r`,
			"cards.token 'pgveil_subst_lit_0'=x compare", ""},
		{"cardholder", `SELECT id FROM cards WHERE token IN (SELECT token FROM cards WHERE holder = 'x')`,
			`SELECT id FROM (SELECT id, customer_id, pan, NULL::pg_catalog.text AS cvv, holder, token FROM public.cards) cards WHERE token IN (SELECT token FROM (SELECT id, customer_id, pan, NULL::pg_catalog.text AS cvv, holder, token FROM public.cards) cards WHERE holder OPERATOR(pg_catalog.=) 'x')`, "", ""},
		{"cardholder", `SELECT id FROM cards WHERE token IN (SELECT holder FROM cards)`, "", "", "with a sub-query only"},
		{"cardholder", `SELECT id FROM cards WHERE pan = $1`, "", "", "is not searchable"},
		{"cardholder", `SELECT id FROM cards WHERE token = upper($1)`, "", "", "only with parameters, literals"},
		{"cardholder", `SELECT id FROM cards WHERE token = ANY($1)`, "", "", "ANY or ALL"},
		{"dpo", `SELECT id FROM cards WHERE token = $1`, "", "", ""},
		{"analyst", `SELECT id FROM cards WHERE token = 'guess'`,
			`SELECT id FROM (SELECT id, customer_id, pan, NULL::pg_catalog.text AS cvv, holder, token FROM public.cards) cards WHERE token OPERATOR(pg_catalog.=) 'guess'`, "", ""},
		// What ciphertext cannot answer.
		{"dpo", `SELECT id FROM cards WHERE pan LIKE '41%'`, "", "", "LIKE, SIMILAR TO and BETWEEN"},
		{"dpo", `SELECT id FROM cards WHERE token BETWEEN 'a' AND 'b'`, "", "", "LIKE, SIMILAR TO and BETWEEN"},
		{"analyst", `SELECT id FROM cards c WHERE c.pan >= '4'`, "", "", ">= cannot be evaluated"},
		{"dpo", `SELECT id FROM cards ORDER BY pan`, "", "", "ORDER BY cannot sort it"},
		{"dpo", `SELECT string_agg(holder, ',' ORDER BY token) FROM cards`, "", "", "ORDER BY cannot sort it"},
		{"dpo", `SELECT id FROM cards ORDER BY upper(pan)`, "", "", ""},
		// COPY FROM: text fields are listed; binary is refused.
		{"dpo", `COPY cards (id, pan, holder, token) FROM STDIN`, "", "copy[1] cards.pan; copy[3] cards.token", ""},
		{"dpo", `COPY cards FROM STDIN (FORMAT csv)`, "", "copy[2] cards.pan; copy[3] cards.cvv; copy[5] cards.token", ""},
		{"dpo", `COPY cards FROM STDIN (FORMAT binary)`, "", "", "binary format"},
		{"dpo", `COPY cards (id, holder) FROM STDIN (FORMAT binary)`, "", "", ""},
		// PREPARE: literals are fine, parameters need the extended protocol.
		{"dpo", `PREPARE p AS INSERT INTO cards (id, pan) VALUES (1, '4111')`,
			`PREPARE p AS INSERT INTO cards (id, pan) VALUES (1, 'pgveil_subst_lit_0')`, "cards.pan 'pgveil_subst_lit_0'=4111", ""},
		{"dpo", `PREPARE p AS INSERT INTO cards (id, pan) VALUES (1, $1)`, "", "", "extended query protocol"},
		// A placeholder the client wrote elsewhere is refused.
		{"dpo", `INSERT INTO cards (id, pan, holder) VALUES (1, '4111', 'pgveil_subst_lit_0')`, "", "", "may not contain"},
		// A masked session may not write a column it sees masked at all.
		{"analyst", `INSERT INTO cards (id, pan) VALUES (1, $1)`, "", "", "may not write masked column"},
	}
	for _, c := range cases {
		t.Run(c.role+"/"+c.in, func(t *testing.T) {
			s := trackedSession(t, c.role)
			plan, err := Rewrite(c.in, s)
			if c.refused != "" {
				re, ok := err.(*Refusal)
				if !ok || !strings.Contains(re.Message, c.refused) {
					t.Fatalf("got %v, want a refusal containing %q", err, c.refused)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := c.sql
			if want == "" {
				want = c.in
			}
			if plan.SQL != want {
				t.Fatalf("sql:\n%s\nwant:\n%s", plan.SQL, want)
			}
			if got := renderEncrypt(plan.Statements[0]); got != c.encrypt {
				t.Fatalf("encrypt %q, want %q", got, c.encrypt)
			}
			if _, err := pg_query.Parse(plan.SQL); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestAnalyzeNeverEncrypts checks that Analyze, the fact finder, never
// changes or refuses a text for encryption's sake (Rewrite does).
func TestAnalyzeNeverEncrypts(t *testing.T) {
	if fx == nil {
		t.Skip("PostgreSQL not installed")
	}
	s := trackedSession(t, "dpo")
	const sql = "INSERT INTO cards (id, pan) VALUES (1, '4111'); SELECT id FROM cards ORDER BY pan"
	p, err := Analyze(sql, s)
	if err != nil || p.SQL != sql || p.Rewritten || len(p.Statements[0].Encrypt) != 0 {
		t.Fatalf("%+v %v", p, err)
	}
}

// TestPlanFlags checks the plan-level summary the proxy tests before any
// per-column work, and the type an output transform masks with.
func TestPlanFlags(t *testing.T) {
	if fx == nil {
		t.Skip("PostgreSQL not installed")
	}
	cases := []struct {
		role, sql            string
		transforms, encrypts bool
	}{
		{"analyst", "SELECT id, pan FROM cards", true, false},
		{"analyst", "SELECT id, upper(pan) FROM cards", false, false},
		{"analyst", "SELECT email FROM customers", false, false},
		{"cardholder", "SELECT 1; SELECT token FROM cards", true, false},
		{"dpo", "SELECT pan FROM cards", false, false},
		{"dpo", "INSERT INTO cards (id, pan) VALUES (1, $1)", false, true},
		{"dpo", "COPY cards (id, token) FROM STDIN", false, true},
	}
	for _, c := range cases {
		p, err := Rewrite(c.sql, trackedSession(t, c.role))
		if err != nil {
			t.Fatal(err)
		}
		if p.Transforms != c.transforms || p.Encrypts != c.encrypts {
			t.Errorf("%s %s: transforms %v encrypts %v", c.role, c.sql, p.Transforms, p.Encrypts)
		}
		for _, st := range p.Statements {
			for _, o := range st.Outputs {
				if o.Transform != TransformNone && o.Type != "text" {
					t.Errorf("%s: output type %q", c.sql, o.Type)
				}
			}
		}
	}
}

// TestEncryptOff checks that with Session.SkipEncrypt nothing is
// encrypted or refused for encryption's sake, and a raw session's
// untracked text is not even parsed.
func TestEncryptOff(t *testing.T) {
	if fx == nil {
		t.Skip("PostgreSQL not installed")
	}
	const sql = "INSERT INTO cards (id, pan) VALUES (1, '4111'); SELECT id FROM cards ORDER BY pan"
	s := trackedSession(t, "dpo")
	s.SkipEncrypt, s.Track = true, false
	p, err := Rewrite(sql, s)
	if err != nil || p.SQL != sql || p.Analyzed {
		t.Fatalf("raw: %+v %v", p, err)
	}
	m := trackedSession(t, "cardholder")
	m.SkipEncrypt = true
	p, err = Rewrite("INSERT INTO cards (id, pan) VALUES (1, '4111')", m)
	if err != nil || strings.Contains(p.SQL, literalPrefix) || len(p.Statements[0].Encrypt) != 0 {
		t.Fatalf("masked: %+v %v", p, err)
	}
	if KeyFor(s, sql) == KeyFor(trackedSession(t, "dpo"), sql) {
		t.Fatal("SkipEncrypt and Track do not split the cache key")
	}
}
