package rewrite

import (
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// scanLits returns sql's shape and literals as the proxy finds them
// (standard_conforming_strings on, as in masked sessions).
func scanLits(sql string) (string, []Literal) {
	var ls LiteralScan
	shape, ok := Normalize(nil, sql, true, &ls)
	if !ok || ls.Other {
		return "", nil
	}
	return string(shape), ls.Lits
}

func TestTemplateHit(t *testing.T) {
	if fx == nil {
		t.Skip("PostgreSQL not installed")
	}
	c := NewCache(0)
	s := session(t, caseHeader{roles: []string{"analyst"}, searchPath: []string{"$user", "public"}})
	run := func(sql string) (*Plan, string) {
		t.Helper()
		plan, text, _, err := c.RewriteShape(sql, s, func() (string, []Literal) { return scanLits(sql) }, false)
		if err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return plan, text
	}
	run("SELECT id, email FROM customers WHERE id = 17 AND name <> 'x'")
	if c.ShapeHits() != 0 {
		t.Fatal("the first text of a shape hit a template")
	}
	q := "SELECT id,  email FROM customers WHERE id = 42 AND name <> 'it''s'"
	plan, text := run(q)
	if c.ShapeHits() != 1 {
		t.Fatal("the second text of the shape did not hit its template")
	}
	direct, err := Rewrite(q, s)
	if err != nil {
		t.Fatal(err)
	}
	if text != direct.SQL {
		t.Fatalf("template gave\n%s\nthe rewrite gives\n%s", text, direct.SQL)
	}
	if !reflect.DeepEqual(plan.Statements, direct.Statements) {
		t.Fatal("template facts differ from the rewrite's")
	}
	if !strings.Contains(text, "42") || !strings.Contains(text, "'it''s'") || strings.Contains(text, "$5000") {
		t.Fatalf("literals not in place: %s", text)
	}

	// Texts that must take the ordinary path every time.
	for _, pair := range [][2]string{
		{"SET search_path = 'crm'", "SET search_path = 'public'"},
		{"SELECT email FROM customers WHERE name = E'a\\\\b'", "SELECT email FROM customers WHERE name = E'c\\\\d'"},
		{"SELECT email FROM customers WHERE name = $$a$$", "SELECT email FROM customers WHERE name = $$b$$"},
		{"SELECT email FROM customers WHERE id = 0x1F", "SELECT email FROM customers WHERE id = 0x2F"},
		// -5 is one constant to the parser, "- $1" an operator on a
		// parameter: the template does not reproduce the rewrite.
		{"SELECT email FROM customers WHERE id = -5", "SELECT email FROM customers WHERE id = -6"},
		{"PREPARE p1 AS SELECT email FROM customers WHERE id = 1", "PREPARE p2 AS SELECT email FROM customers WHERE id = 2"},
		// "?" is an operator character: the second text does not parse,
		// and must not share the first one's shape.
		{`SELECT '{"a":1}'::jsonb ? 'a', id FROM orders`, `SELECT '{"a":1}'::jsonb 'a' ?, id FROM orders`},
		// A number in these lists may be a positional reference to an
		// output column (ORDER BY (2) sorts by ssn), a string is not.
		{"SELECT id, ssn FROM customers ORDER BY ('x')", "SELECT id, ssn FROM customers ORDER BY (2)"},
		{"SELECT id, ssn FROM customers ORDER BY (1.5)", "SELECT id, ssn FROM customers ORDER BY (2)"},
		{"SELECT city, count(*) FROM customers GROUP BY DISTINCT 'x'", "SELECT city, count(*) FROM customers GROUP BY DISTINCT 1"},
		{"SELECT city, count(*) FROM customers GROUP BY ROLLUP('x')", "SELECT city, count(*) FROM customers GROUP BY ROLLUP(1)"},
		{"SELECT city, count(*) FROM customers GROUP BY GROUPING SETS (('x'))", "SELECT city, count(*) FROM customers GROUP BY GROUPING SETS ((1))"},
		{"SELECT DISTINCT ON (('x')) id, ssn FROM customers", "SELECT DISTINCT ON ((2)) id, ssn FROM customers"},
	} {
		before := c.ShapeHits()
		for _, q := range pair {
			_, _, _, _ = c.RewriteShape(q, s, func() (string, []Literal) { return scanLits(q) }, false)
		}
		if c.ShapeHits() != before {
			t.Errorf("%q took a template", pair[1])
		}
	}
}

// TestTemplateCorpus checks, over every golden case, that a text whose
// literals differ from the case's gets from its shape's template exactly
// what rewriting it gives: the same text, facts and refusals.
func TestTemplateCorpus(t *testing.T) {
	if fx == nil {
		t.Skip("PostgreSQL not installed")
	}
	dirs, err := filepath.Glob("testdata/cases/*")
	if err != nil {
		t.Fatal(err)
	}
	hits := 0
	for _, dir := range dirs {
		input, err := os.ReadFile(filepath.Join(dir, "input.sql"))
		if err != nil {
			t.Fatal(err)
		}
		sql := string(input)
		shape, lits := scanLits(sql)
		if len(lits) == 0 {
			continue
		}
		// Another value of the same kind for every literal.
		var b strings.Builder
		prev := 0
		for _, l := range lits {
			b.WriteString(sql[prev:l.Start])
			if sql[l.Start] == '\'' {
				b.WriteString("'pgveil-other''s'")
			} else if sql[l.Start:l.End] == "3" {
				b.WriteString("4")
			} else {
				b.WriteString("3")
			}
			prev = l.End
		}
		b.WriteString(sql[prev:])
		varied := b.String()
		h := parseHeader(sql)
		s := session(t, h)
		c := NewCache(0)
		_, _, _, _ = c.RewriteShape(sql, s, func() (string, []Literal) { return shape, lits }, false)
		vshape, vlits := scanLits(varied)
		if vshape != shape {
			t.Fatalf("%s: varying literals changed the shape:\n%s\n%s", dir, shape, vshape)
		}
		plan, text, _, err := c.RewriteShape(varied, s, func() (string, []Literal) { return vshape, vlits }, false)
		direct, derr := Rewrite(varied, s)
		if outcome(direct, derr) != outcome(&Plan{SQL: text}, err) {
			t.Errorf("%s: through the cache:\n%s\nrewritten:\n%s", dir, outcome(&Plan{SQL: text}, err), outcome(direct, derr))
			continue
		}
		if err == nil && !reflect.DeepEqual(plan.Statements, direct.Statements) {
			t.Errorf("%s: facts differ", dir)
		}
		hits += int(c.ShapeHits())
	}
	// The corpus has many SELECTs with constants; most must template.
	if hits < 20 {
		t.Fatalf("only %d golden cases were answered by a template", hits)
	}
	t.Logf("%d golden cases answered by a template", hits)
}

// BenchmarkTemplateHit measures a masked simple-protocol text answered by
// its shape's template: scan, lookup and splice, no parse.
func BenchmarkTemplateHit(b *testing.B) {
	if fx == nil {
		b.Skip("PostgreSQL not installed")
	}
	c := NewCache(0)
	s := session(b, caseHeader{roles: []string{"analyst"}, searchPath: []string{"$user", "public"}})
	texts := []string{"SELECT id, email, ssn FROM customers WHERE id = 1", "SELECT id, email, ssn FROM customers WHERE id = 2"}
	var ls LiteralScan
	var shape []byte
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		sql := texts[i%2]
		i++
		_, _, _, err := c.RewriteShape(sql, s, func() (string, []Literal) {
			ls.Lits = ls.Lits[:0]
			shape, _ = Normalize(shape[:0], sql, true, &ls)
			return string(shape), ls.Lits
		}, false)
		if err != nil {
			b.Fatal(err)
		}
	}
	if c.ShapeHits() == 0 {
		b.Fatal("no template hits")
	}
}

// varyLiterals returns sql with every literal of lits replaced by another
// of its kind, chosen by seed.
func varyLiterals(sql string, lits []Literal, seed uint8) string {
	strs := []string{"'pgveil-other''s'", "''", "'42'", "'2024-02-29'", "'%a_'", "'x'"}
	nums := []string{"3", "4", "0", "2147483648", "1.5", "1e3", "99999999999999999999"}
	var b strings.Builder
	prev := 0
	for i, l := range lits {
		b.WriteString(sql[prev:l.Start])
		k := int(seed) + i
		if sql[l.Start] == '\'' {
			b.WriteString(strs[k%len(strs)])
		} else {
			b.WriteString(nums[k%len(nums)])
		}
		prev = l.End
	}
	b.WriteString(sql[prev:])
	return b.String()
}

// FuzzTemplate: for any text, a text of the same shape with other
// constants gets from the template exactly what rewriting it gives (text,
// facts, refusal), and a Bound template's parameter text re-parses with
// one parameter per literal.
func FuzzTemplate(f *testing.F) {
	if fx == nil {
		f.Skip("PostgreSQL not installed")
	}
	dirs, _ := filepath.Glob("testdata/cases/*/input.sql")
	for _, d := range dirs {
		if b, err := os.ReadFile(d); err == nil {
			f.Add(string(b), uint8(0))
		}
	}
	s := session(f, caseHeader{roles: []string{"analyst"}, searchPath: []string{"$user", "public"}})
	f.Fuzz(func(t *testing.T, sql string, seed uint8) {
		shape, lits := scanLits(sql)
		if len(lits) == 0 {
			return
		}
		c := NewCache(0)
		_, _, _, _ = c.RewriteShape(sql, s, func() (string, []Literal) { return shape, lits }, false)
		varied := varyLiterals(sql, lits, seed)
		vshape, vlits := scanLits(varied)
		if vshape != shape || len(vlits) != len(lits) {
			return // the replacement changed how the text scans (e.g. a number next to a dot)
		}
		plan, text, bound, err := c.RewriteShape(varied, s, func() (string, []Literal) { return vshape, vlits }, false)
		direct, derr := Rewrite(varied, s)
		if got, want := outcome(&Plan{SQL: text}, err), outcome(direct, derr); got != want {
			t.Fatalf("template vs rewrite of\n%s\n--- template:\n%s--- rewrite:\n%s", varied, got, want)
		}
		if err == nil && !reflect.DeepEqual(plan.Statements, direct.Statements) {
			t.Fatalf("facts differ for\n%s", varied)
		}
		if bound != nil {
			tree, err := pg_query.Parse(bound.SQL)
			if err != nil {
				t.Fatalf("bound text does not parse: %v\n%s", err, bound.SQL)
			}
			_ = tree
			for i := range lits {
				if !strings.Contains(bound.SQL, "$"+strconv.Itoa(i+1)) {
					t.Fatalf("parameter $%d missing from\n%s", i+1, bound.SQL)
				}
			}
		}
	})
}
