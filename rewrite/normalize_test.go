package rewrite

import (
	"strings"
	"testing"
)

func TestNormalizeSQL(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		scsOff   bool
		fail     bool
	}{
		{in: "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;", want: "SELECT abalance FROM pgbench_accounts WHERE aid = ?;"},
		{in: "select  a,\n\tb -- comment 'x'\n from t where x = 'it''s' and y=1.5e-3", want: "select a, b from t where x = ? and y=?"},
		{in: "SELECT * FROM t WHERE a = E'it\\'s' AND b = B'101' AND c = X'ff' AND d = N'n' AND e = U&'d\\0061t'", want: "SELECT * FROM t WHERE a = ? AND b = ? AND c = ? AND d = ? AND e = ?"},
		{in: "SELECT $q$ a 'b' $q$, $$x$$, $1 FROM t", want: "SELECT ?, ?, $1 FROM t"},
		{in: `SELECT "we""ird", 'x' FROM "T" /* a /* nested */ comment */ LIMIT 10 OFFSET 5`, want: `SELECT "we""ird", ? FROM "T" LIMIT ? OFFSET ?`},
		{in: "SELECT a, b FROM t ORDER BY 2, 1 DESC LIMIT 3", want: "SELECT a, b FROM t ORDER BY 2, 1 DESC LIMIT ?"},
		{in: "SELECT a, count(*) FROM t GROUP BY 1 HAVING count(*) > 2 ORDER BY (1), f(a, 3)", want: "SELECT a, count(*) FROM t GROUP BY 1 HAVING count(*) > ? ORDER BY (?), f(a, ?)"},
		{in: "SELECT DISTINCT ON (1, 2) a, b FROM t WHERE c IN (1, 2, 3)", want: "SELECT DISTINCT ON (1, 2) a, b FROM t WHERE c IN (?, ?, ?)"},
		{in: "INSERT INTO t VALUES (1, 'a', 0x1F, .5, 1_000)", want: "INSERT INTO t VALUES (?, ?, ?, ?, ?)"},
		{in: "SELECT t1.c2 FROM t1", want: "SELECT t1.c2 FROM t1"},
		{in: "SELECT 'a\\'b' FROM t", want: "SELECT ? FROM t", scsOff: true},
		{in: "SELECT 'a\\'b' FROM t", want: "SELECT ?b' FROM t", fail: true},
		{in: "SELECT 'unterminated", fail: true},
		{in: "SELECT /* unterminated", fail: true},
		{in: "SELECT $tag$ never closed", fail: true},
		{in: "SELECT '2024-01-01'::date, date '2024-01-01', interval '1 day'", want: "SELECT ?::date, date ?, interval ?"},
	} {
		got, ok := NormalizeSQL(nil, tc.in, !tc.scsOff)
		if tc.fail {
			if ok {
				t.Errorf("%q: scanned as %q, want a failure", tc.in, got)
			}
			continue
		}
		if !ok || string(got) != tc.want {
			t.Errorf("%q:\n got %q (ok %v)\nwant %q", tc.in, got, ok, tc.want)
		}
	}
}

// TestNormalizeSameShape: texts that differ only in constants share a key;
// texts that differ in anything else do not.
func TestNormalizeSameShape(t *testing.T) {
	same := [][2]string{
		{"SELECT * FROM t WHERE id = 1", "SELECT * FROM t WHERE id = 2"},
		{"SELECT * FROM t WHERE s = 'a'", "SELECT * FROM t  WHERE s = 'b''c'"},
	}
	differ := [][2]string{
		{"SELECT a FROM t ORDER BY 1", "SELECT a FROM t ORDER BY 2"},
		{"SELECT a FROM t", "SELECT b FROM t"},
		{`SELECT "a" FROM t`, `SELECT "b" FROM t`},
		{"SELECT $1", "SELECT $2"},
	}
	key := func(s string) string {
		b, ok := NormalizeSQL(nil, s, true)
		if !ok {
			t.Fatalf("%q does not scan", s)
		}
		return string(b)
	}
	for _, p := range same {
		if key(p[0]) != key(p[1]) {
			t.Errorf("%q and %q should share a key", p[0], p[1])
		}
	}
	for _, p := range differ {
		if key(p[0]) == key(p[1]) {
			t.Errorf("%q and %q must not share a key", p[0], p[1])
		}
	}
}

func TestNormalizeAllocatesNothing(t *testing.T) {
	buf := make([]byte, 0, 256)
	sql := "SELECT abalance FROM pgbench_accounts WHERE aid = 4711 ORDER BY 1 LIMIT 10"
	if n := testing.AllocsPerRun(100, func() { buf, _ = NormalizeSQL(buf[:0], sql, true) }); n != 0 {
		t.Fatalf("%v allocations per normalisation", n)
	}
}

func BenchmarkNormalize(b *testing.B) {
	buf := make([]byte, 0, 256)
	sql := "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;"
	for b.Loop() {
		buf, _ = NormalizeSQL(buf[:0], sql, true)
	}
}

func FuzzNormalize(f *testing.F) {
	for _, s := range []string{"SELECT 1", "SELECT 'a''b' -- x\n", "SELECT $$x$$ /* a /* b */ */", "ORDER BY 1, 2"} {
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, sql string, scs bool) {
		var ls LiteralScan
		out, ok := Normalize(nil, sql, scs, &ls)
		if ok && len(out) > 2*len(sql)+1 {
			t.Fatalf("output %d bytes for %d input bytes", len(out), len(sql))
		}
		if !ok {
			return
		}
		// The literals a statement template may put back are ordered,
		// disjoint, and each is one whole token: a '...' string (only
		// with standard strings) or a decimal number.
		prev := 0
		for _, l := range ls.Lits {
			if l.Start < prev || l.End <= l.Start || l.End > len(sql) {
				t.Fatalf("bad literal span %v after %d in %q", l, prev, sql)
			}
			tok := sql[l.Start:l.End]
			switch {
			case tok[0] == '\'':
				if !scs || tok[len(tok)-1] != '\'' || strings.Count(tok, "'")%2 != 0 {
					t.Fatalf("bad string literal %q in %q", tok, sql)
				}
			case !decimalNumber(tok):
				t.Fatalf("bad numeric literal %q in %q", tok, sql)
			}
			prev = l.End
		}
	})
}

// TestKeyword checks keyword against the word lists it encodes, in every
// case, and that only ASCII letters fold.
func TestKeyword(t *testing.T) {
	want := map[string]string{"by": "by", "on": "on", "order": "order", "group": "group", "distinct": "distinct"}
	for _, k := range endOfList {
		want[k] = "end-of-list"
	}
	for w, kw := range want {
		for _, v := range []string{w, strings.ToUpper(w), strings.ToUpper(w[:1]) + w[1:], w[:len(w)-1] + strings.ToUpper(w[len(w)-1:])} {
			if got := keyword(v); got != kw {
				t.Errorf("keyword(%q) = %q, want %q", v, got, kw)
			}
		}
		for _, v := range []string{w + "s", w[1:], "x" + w[1:], w[:len(w)-1] + "_", w[:len(w)-1] + "1"} {
			if _, ok := want[v]; ok {
				continue
			}
			if got := keyword(v); got != "id" {
				t.Errorf("keyword(%q) = %q, want id", v, got)
			}
		}
	}
	for _, v := range []string{"", "b", "\u212Ay", "ſelect", "orDer_", "limits", "fromm", "wher", "returnin", "intersects", "distinctly"} {
		if got := keyword(v); got != "id" {
			t.Errorf("keyword(%q) = %q, want id", v, got)
		}
	}
}
