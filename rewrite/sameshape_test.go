package rewrite

import (
	"math/rand/v2"
	"strings"
	"testing"
)

// shapeOf normalizes s with its literal spans, as SameShape's callers do.
func shapeOf(t testing.TB, s string, scs bool) (string, []Literal, bool) {
	t.Helper()
	var ls LiteralScan
	b, ok := Normalize(nil, s, scs, &ls)
	return string(b), ls.Lits, ok
}

func TestSameShape(t *testing.T) {
	for _, tc := range []struct {
		prev, sql string
		want      bool
	}{
		{"SELECT abalance FROM pgbench_accounts WHERE aid = 4711;", "SELECT abalance FROM pgbench_accounts WHERE aid = 12;", true},
		{"SELECT abalance FROM pgbench_accounts WHERE aid = 4711;", "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;", true},
		{"SELECT * FROM t WHERE s = 'a' AND n IN (1,2)", "SELECT * FROM t WHERE s = 'it''s' AND n IN (30,4.5e3)", true},
		{"INSERT INTO t VALUES (1, 'x')", "INSERT INTO t VALUES ('1', 'x')", false}, // another kind
		{"SELECT * FROM t WHERE a = 1", "SELECT * FROM t WHERE a = 1 OR true", false},
		{"SELECT * FROM t WHERE a = 1", "SELECT * FROM t WHERE a = 1e", false},    // an identifier follows
		{"SELECT * FROM t WHERE a = 1", "SELECT * FROM t WHERE a = 0x1F", false},  // not a decimal number
		{"SELECT * FROM t WHERE a = 1", "SELECT * FROM t WHERE a = 1_000", false}, // nor this
		{"SELECT * FROM t WHERE a = 'x'", "SELECT * FROM t WHERE a = 'x", false},  // unterminated
		{"SELECT * FROM t WHERE a = 1", "SELECT * FROM t WHERE a = 'x'", false},   // another kind
		{"SELECT a FROM t ORDER BY 1", "SELECT a FROM t ORDER BY 2", false},       // a positional reference, not a literal
		{"SELECT a FROM t LIMIT 1", "SELECT b FROM t LIMIT 1", false},
		{"SELECT 1..5", "SELECT 1.75", false},  // "1." was a number and a dot because of what followed
		{"SELECT abc.5", "SELECT abc7", false}, // an identifier would take the digits
		{"SELECT 1e+.5", "SELECT 1e+7", false}, // an exponent would take them
		{"SELECT $1.5", "SELECT $17", false},   // a parameter would
		{"SELECT x'0'", "SELECT x'1'", false},  // a bit string, not a plain literal
		{"SELECT -1", "SELECT -2", false},      // after "-": not counted (an exponent's sign looks alike)
		{"SELECT 'a'", "SELECT 'b'", true},
		{"SELECT 'a' ", "SELECT 'b'", false},
		{"", "", true},
	} {
		scs := true
		_, lits, ok := shapeOf(t, tc.prev, scs)
		if !ok {
			t.Fatalf("%q does not scan", tc.prev)
		}
		if got := SameShape(tc.prev, lits, tc.sql, scs); got != tc.want {
			t.Errorf("SameShape(%q, %q) = %v, want %v", tc.prev, tc.sql, got, tc.want)
		}
	}
}

// TestSameShapeAgreesWithNormalize checks SameShape's one promise on
// random texts: when it says two texts have the same shape, Normalize
// gives them the same text. The texts are built from tokens that exercise
// the scanner's look-ahead (numbers with fractions and exponents, dots,
// signs, identifiers, parameters, prefixed and doubled-quote strings,
// comments) and the second text replaces the first's literals, and
// random bytes, with random fragments.
func TestSameShapeAgreesWithNormalize(t *testing.T) {
	frags := []string{" ", "  ", "\n", "(", ")", ",", "=", "<", ">", "[", "]", ".", "..", "-", "+", "e", "E", "x", "$", "$1", "'", "''", "'a'", "'it''s'",
		"E'", "1", "12", "0", "0x", "1.5", ".5", "1e5", "1e-3", "_", "a", "abc", "t1", "--c\n", "/*c*/", "::int", "SELECT", "FROM", "ORDER BY", "GROUP BY", ";", "\"q\"", "?"}
	rnd := rand.New(rand.NewPCG(1, 2))
	gen := func(n int) string {
		var b strings.Builder
		for range n {
			b.WriteString(frags[rnd.IntN(len(frags))])
		}
		return b.String()
	}
	agreed, checked := 0, 0
	for range 300000 {
		prev := gen(1 + rnd.IntN(12))
		scs := rnd.IntN(8) != 0
		var ls LiteralScan
		norm, ok := Normalize(nil, prev, scs, &ls)
		if !ok {
			continue
		}
		// Replace some literals, then perhaps mutate a byte.
		var b strings.Builder
		at := 0
		for _, l := range ls.Lits {
			b.WriteString(prev[at:l.Start])
			if rnd.IntN(2) == 0 {
				b.WriteString(prev[l.Start:l.End])
			} else {
				b.WriteString(gen(1 + rnd.IntN(2)))
			}
			at = l.End
		}
		b.WriteString(prev[at:])
		sql := b.String()
		if rnd.IntN(4) == 0 && len(sql) > 0 {
			p := rnd.IntN(len(sql))
			sql = sql[:p] + frags[rnd.IntN(len(frags))] + sql[p+1:]
		}
		checked++
		if !SameShape(prev, ls.Lits, sql, scs) {
			continue
		}
		agreed++
		got, ok := Normalize(nil, sql, scs, &LiteralScan{})
		if !ok || string(got) != string(norm) {
			t.Fatalf("SameShape(%q, %q, scs=%v) but Normalize gives %q (ok %v) and %q", prev, sql, scs, norm, ok, got)
		}
	}
	// The test must exercise the positive case, not only refusals.
	if agreed < checked/20 {
		t.Fatalf("only %d of %d pairs had the same shape: the generator does not exercise SameShape", agreed, checked)
	}
	t.Logf("%d of %d pairs had the same shape, all confirmed by Normalize", agreed, checked)
}

func TestSameShapeAllocatesNothing(t *testing.T) {
	prev := "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;"
	_, lits, _ := shapeOf(t, prev, true)
	sql := "SELECT abalance FROM pgbench_accounts WHERE aid = 99999;"
	if n := testing.AllocsPerRun(100, func() { SameShape(prev, lits, sql, true) }); n != 0 {
		t.Fatalf("%v allocations", n)
	}
}

func BenchmarkSameShape(b *testing.B) {
	prev := "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;"
	_, lits, _ := shapeOf(b, prev, true)
	sql := "SELECT abalance FROM pgbench_accounts WHERE aid = 99999;"
	for b.Loop() {
		if !SameShape(prev, lits, sql, true) {
			b.Fatal("not the same shape")
		}
	}
}

func FuzzSameShape(f *testing.F) {
	f.Add("SELECT * FROM t WHERE a = 1 AND b = 'x'", "SELECT * FROM t WHERE a = 22 AND b = 'y'")
	f.Add("SELECT 1..5", "SELECT 1.75")
	f.Fuzz(func(t *testing.T, prev, sql string) {
		var ls LiteralScan
		norm, ok := Normalize(nil, prev, true, &ls)
		if !ok || !SameShape(prev, ls.Lits, sql, true) {
			return
		}
		got, ok := Normalize(nil, sql, true, &LiteralScan{})
		if !ok || string(got) != string(norm) {
			t.Fatalf("SameShape(%q, %q) but Normalize gives %q and %q (ok %v)", prev, sql, norm, got, ok)
		}
	})
}
