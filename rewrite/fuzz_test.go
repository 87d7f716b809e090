package rewrite

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/pgveil/pgveil/rules"
)

// FuzzRewrite feeds arbitrary SQL to a masked and to a raw session: no
// panic, every output re-parses, no protected relation is read anywhere
// except through a masking sub-query, the raw session's text is never
// refused or changed, and the output facts are consistent with the text.
func FuzzRewrite(f *testing.F) {
	if fx == nil {
		f.Skip("PostgreSQL not installed")
	}
	dirs, _ := filepath.Glob("testdata/cases/*/input.sql")
	for _, d := range dirs {
		b, err := os.ReadFile(d)
		if err == nil {
			f.Add(string(b))
		}
	}
	s := session(f, caseHeader{roles: []string{"analyst"}, searchPath: []string{"$user", "public"}})
	raw := trackedSession(f, "dpo")
	f.Fuzz(func(t *testing.T, sql string) {
		// A raw session's analysis never fails and never changes the
		// text; its facts are consistent.
		rp, err := Analyze(sql, raw)
		if err != nil || rp.SQL != sql || rp.Rewritten {
			t.Fatalf("raw analysis: %v", err)
		}
		checkOutputs(t, sql, rp)
		// With the write-path encryption rules, a raw session's text is
		// either refused, sent as it is, or deparsed with exactly one
		// placeholder per encrypted literal.
		if ep, err := Rewrite(sql, raw); err == nil && ep.Rewritten {
			if _, err := pg_query.Parse(ep.SQL); err != nil {
				t.Fatalf("encrypted text does not re-parse: %v\n%s", err, ep.SQL)
			}
			n := 0
			for _, st := range ep.Statements {
				for _, e := range st.Encrypt {
					if e.Placeholder != "" {
						n++
						if strings.Count(ep.SQL, e.Placeholder) != 1 {
							t.Fatalf("placeholder %s not once in\n%s", e.Placeholder, ep.SQL)
						}
					}
				}
			}
			if n == 0 || strings.Count(ep.SQL, literalPrefix) != n {
				t.Fatalf("%d literal placeholders listed for\n%s", n, ep.SQL)
			}
		} else if err == nil && ep.SQL != sql {
			t.Fatalf("raw text changed without a rewrite")
		}
		plan, err := Rewrite(sql, s)
		if err != nil || !plan.Rewritten {
			return
		}
		checkOutputs(t, sql, plan)
		// The masked session's facts are those Analyze finds.
		if ap, err := Analyze(sql, s); err != nil || renderFacts(ap) != renderFacts(plan) {
			t.Fatalf("Analyze and Rewrite disagree: %v\n%s\n%s", err, renderFacts(ap), renderFacts(plan))
		}
		tree, err := pg_query.Parse(plan.SQL)
		if err != nil {
			t.Fatalf("output does not re-parse: %v\n%s", err, plan.SQL)
		}
		if leak := unmaskedRead(s, tree); leak != "" {
			t.Fatalf("%s is read without masking in\n%s", leak, plan.SQL)
		}
	})
}

// checkOutputs checks the output facts of a plan against its text: a
// plain SELECT without * has one output per target; a Source comes with
// its rule, and a transform only for an encrypted column.
func checkOutputs(t *testing.T, sql string, p *Plan) {
	t.Helper()
	if !p.Analyzed {
		return
	}
	tree, err := pg_query.Parse(sql)
	if err != nil || len(tree.Stmts) != len(p.Statements) {
		t.Fatalf("%d statements analysed for %d parsed (%v)", len(p.Statements), len(tree.GetStmts()), err)
	}
statements:
	for i, st := range p.Statements {
		if !st.OutputsKnown && len(st.Outputs) != 0 {
			t.Fatalf("statement %d: outputs listed but not known", i)
		}
		for _, o := range st.Outputs {
			if o.Source == nil && (o.Rule != nil || o.Transform != TransformNone) {
				t.Fatalf("statement %d: a transform without a source: %+v", i, o)
			}
			if o.Transform != TransformNone && (o.Rule == nil || o.Rule.Encrypted == nil) {
				t.Fatalf("statement %d: a transform of an unencrypted column: %+v", i, o)
			}
		}
		sel := tree.Stmts[i].Stmt.GetSelectStmt()
		if sel == nil || sel.Op != pg_query.SetOperation_SETOP_NONE || len(sel.ValuesLists) > 0 || sel.IntoClause != nil || !st.OutputsKnown {
			continue
		}
		for _, tl := range sel.TargetList {
			if c := tl.GetResTarget().GetVal().GetColumnRef(); c != nil && isStar(c) {
				continue statements
			}
		}
		if len(st.Outputs) != len(sel.TargetList) {
			t.Fatalf("statement %d: %d outputs for %d targets", i, len(st.Outputs), len(sel.TargetList))
		}
	}
}

// TestNoUnmaskedReadInGolden applies the fuzz target's leak check to every
// golden output.
func TestNoUnmaskedReadInGolden(t *testing.T) {
	if fx == nil {
		t.Skip("PostgreSQL not installed")
	}
	dirs, _ := filepath.Glob("testdata/cases/*/input.sql")
	for _, d := range dirs {
		b, _ := os.ReadFile(d)
		h := parseHeader(string(b))
		s := session(t, h)
		plan, err := Rewrite(string(b), s)
		if err != nil || !plan.Rewritten {
			continue
		}
		tree, err := pg_query.Parse(plan.SQL)
		if err != nil {
			t.Fatalf("%s: %v", d, err)
		}
		if leak := unmaskedRead(s, tree); leak != "" {
			t.Errorf("%s: %s is read without masking", d, leak)
		}
	}
}

// unmaskedRead walks a parsed output and returns the name of a protected
// relation that is read by a SELECT whose target list exposes one of its
// masked columns as a bare column reference, or "" if there is none.
func unmaskedRead(s *Session, tree *pg_query.ParseResult) string {
	w := newWalker(s, nil)
	var leak string
	var visit func(m protoreflect.Message)
	visit = func(m protoreflect.Message) {
		if leak != "" {
			return
		}
		if sel, ok := m.Interface().(*pg_query.SelectStmt); ok {
			for _, from := range sel.FromClause {
				// The rewrite qualifies every relation it resolved; an
				// unqualified name left in the output is a CTE (or a
				// relation the catalog does not know, which the rewrite
				// refuses when the policy names it).
				rv := from.GetRangeVar()
				if rv == nil || rv.Schemaname == "" {
					continue
				}
				rel := w.resolve(rv)
				if rel == nil || !w.protectedFor(rel) {
					continue
				}
				masked := w.maskedColumns(rel)
				for c := range masked {
					// An encrypted column is projected as stored
					// (ciphertext); the proxy decrypts and masks it.
					if r := w.columnRule(rel, c); r != nil && r.Encrypted != nil && r.Class.Mask.Kind != rules.MaskDeny {
						delete(masked, c)
					}
				}
				for _, t := range sel.TargetList {
					rt := t.GetResTarget()
					if rt == nil {
						leak = rel.Name.Name
						return
					}
					if c := rt.Val.GetColumnRef(); c != nil {
						last := c.Fields[len(c.Fields)-1]
						if last.GetAStar() != nil {
							leak = rel.Name.Name + " (star)"
							return
						}
						if masked[last.GetString_().GetSval()] {
							leak = rel.Name.Name + "." + last.GetString_().GetSval()
							return
						}
					} else if masked[rt.Name] && rt.Val.GetTypeCast() == nil && rt.Val.GetAConst() == nil {
						leak = rel.Name.Name + "." + rt.Name + " (unexpected expression)"
						return
					}
				}
				if len(sel.FromClause) != 1 || sel.WhereClause != nil && len(w.rowFilters(rel)) == 0 {
					leak = rel.Name.Name + " (not a masking sub-query)"
					return
				}
			}
		}
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			if fd.Kind() != protoreflect.MessageKind {
				return true
			}
			if fd.IsList() {
				for i := 0; i < v.List().Len(); i++ {
					visit(v.List().Get(i).Message())
				}
			} else {
				visit(v.Message())
			}
			return true
		})
	}
	visit(tree.ProtoReflect())
	return leak
}
