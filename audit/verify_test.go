package audit

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// edit changes the user of a line without touching its chain fields.
func edit(t testing.TB, line string) string {
	t.Helper()
	out := strings.Replace(line, `"user":"analyst"`, `"user":"mallory"`, 1)
	if out == line {
		t.Fatalf("nothing to edit in %s", line)
	}
	return out
}

// recompute rewrites the prev of every line from i on, as an attacker
// without the HMAC key would after editing line i.
func recompute(t testing.TB, lines []string, i int) {
	t.Helper()
	for j := i + 1; j < len(lines); j++ {
		lines[j] = setPrev(t, lines[j], lineHash(lines[j-1]))
	}
}

// TestVerifyTampering alters a 30-line log in every way the verifier must
// catch and checks that it names the right line; the two alterations a
// chain alone cannot see (an edit with every later hash recomputed, a cut
// tail) pass without the key or the anchor and fail with them.
func TestVerifyTampering(t *testing.T) {
	const n = 30
	dir := t.TempDir()
	plain := filepath.Join(dir, "plain.log")
	keyed := filepath.Join(dir, "keyed.log")
	writeLog(t, plain, nil, n)
	writeLog(t, keyed, testKey, n)
	otherKey := []byte(strings.Repeat("x", 32))

	for _, tc := range []struct {
		name     string
		keyed    bool   // tamper with the keyed log
		key      []byte // verify with this key
		anchorAt int    // verify with --expect-head of this (1-based) line of the original
		tamper   func(t *testing.T, lines []string) []string
		wantLine int    // 0: Verify must pass
		want     string // the reason
	}{
		{name: "intact", tamper: func(t *testing.T, l []string) []string { return l }},
		{name: "intact with key", keyed: true, key: testKey, anchorAt: n,
			tamper: func(t *testing.T, l []string) []string { return l }},
		{name: "edited field", tamper: func(t *testing.T, l []string) []string {
			l[16] = edit(t, l[16])
			return l
		}, wantLine: 17, want: "line 17 edited (prev hash of line 18 does not match)"},
		{name: "edited field with key", keyed: true, key: testKey, tamper: func(t *testing.T, l []string) []string {
			l[16] = edit(t, l[16])
			return l
		}, wantLine: 17, want: "line 17 HMAC mismatch"},
		{name: "deleted line", tamper: func(t *testing.T, l []string) []string {
			return slices.Delete(l, 8, 9)
		}, wantLine: 9, want: "line 9 missing (sequence jumps from 8 to 10)"},
		{name: "deleted lines", tamper: func(t *testing.T, l []string) []string {
			return slices.Delete(l, 8, 11)
		}, wantLine: 9, want: "lines 9-11 missing (sequence jumps from 8 to 12)"},
		{name: "deleted first line", tamper: func(t *testing.T, l []string) []string {
			return l[1:]
		}, wantLine: 0},
		{name: "inserted forged line chained correctly", tamper: func(t *testing.T, l []string) []string {
			return slices.Insert(l, 12, setPrev(t, edit(t, l[12]), lineHash(l[11])))
		}, wantLine: 13, want: "line 13 inserted (its sequence 13 repeats at line 14, which chains to line 12)"},
		{name: "inserted forged line", tamper: func(t *testing.T, l []string) []string {
			return slices.Insert(l, 12, setPrev(t, edit(t, l[12]), strings.Repeat("f", 64)))
		}, wantLine: 13, want: "line 13 inserted (its sequence 13 repeats at line 14)"},
		{name: "inserted copy", tamper: func(t *testing.T, l []string) []string {
			return slices.Insert(l, 5, l[4])
		}, wantLine: 6, want: "line 6 inserted (a copy of line 5)"},
		{name: "inserted line repeating a sequence", tamper: func(t *testing.T, l []string) []string {
			return slices.Insert(l, 5, strings.Replace(l[20], `"seq":21,`, `"seq":5,`, 1))
		}, wantLine: 6, want: "line 6 inserted (sequence 5 repeats line 5)"},
		{name: "inserted line with a later sequence", tamper: func(t *testing.T, l []string) []string {
			return slices.Insert(l, 5, strings.Replace(l[20], `"seq":21,`, `"seq":99,`, 1))
		}, wantLine: 6, want: "line 6 inserted (the sequence goes on from 6 at line 7)"},
		{name: "inserted line with key", keyed: true, key: testKey, tamper: func(t *testing.T, l []string) []string {
			forged := setPrev(t, edit(t, l[12]), lineHash(l[11]))
			l = slices.Insert(l, 12, forged)
			recompute(t, l, 12)
			return l
		}, wantLine: 13, want: "line 13 HMAC mismatch"},
		{name: "swapped lines", tamper: func(t *testing.T, l []string) []string {
			l[4], l[5] = l[5], l[4]
			return l
		}, wantLine: 5, want: "lines 5 and 6 reordered (sequence 6 before 5)"},
		{name: "swapped distant lines", tamper: func(t *testing.T, l []string) []string {
			l[2], l[6] = l[6], l[2]
			return l
		}, wantLine: 3, want: "line 3 reordered (sequence 3 expected, found 7; record 3 is at line 7)"},
		{name: "swapped last lines", tamper: func(t *testing.T, l []string) []string {
			l[n-2], l[n-1] = l[n-1], l[n-2]
			return l
		}, wantLine: n - 1, want: "lines 29 and 30 reordered"},
		{name: "edited sequence", tamper: func(t *testing.T, l []string) []string {
			l[9] = strings.Replace(l[9], `"seq":10,`, `"seq":99,`, 1)
			return l
		}, wantLine: 10, want: "line 10 edited (sequence 99 where 10 expected)"},
		{name: "edited with hashes recomputed", tamper: func(t *testing.T, l []string) []string {
			l[16] = edit(t, l[16])
			recompute(t, l, 16)
			return l
		}, wantLine: 0},
		{name: "edited with hashes recomputed, key", keyed: true, key: testKey, tamper: func(t *testing.T, l []string) []string {
			l[16] = edit(t, l[16])
			recompute(t, l, 16)
			return l
		}, wantLine: 17, want: "line 17 HMAC mismatch"},
		{name: "edited with hashes recomputed, anchor", anchorAt: n, tamper: func(t *testing.T, l []string) []string {
			l[16] = edit(t, l[16])
			recompute(t, l, 16)
			return l
		}, wantLine: n, want: "line 30 does not match the expected head 30:"},
		{name: "edited first line's prev", tamper: func(t *testing.T, l []string) []string {
			l[0] = setPrev(t, l[0], strings.Repeat("a", 64))
			return l
		}, wantLine: 1, want: "line 1 edited (sequence 1 does not chain to genesis)"},
		{name: "truncated tail", tamper: func(t *testing.T, l []string) []string {
			return l[:n-3]
		}, wantLine: 0},
		{name: "truncated tail, anchor", anchorAt: n, tamper: func(t *testing.T, l []string) []string {
			return l[:n-3]
		}, wantLine: n - 3, want: "log truncated: it ends at sequence 27, but the expected head is sequence 30"},
		{name: "edited last line, anchor", anchorAt: n, tamper: func(t *testing.T, l []string) []string {
			l[n-1] = edit(t, l[n-1])
			return l
		}, wantLine: n, want: "does not match the expected head"},
		{name: "garbage line", tamper: func(t *testing.T, l []string) []string {
			l[3] = "hello"
			return l
		}, wantLine: 4, want: "line 4 is not an audit record"},
		{name: "no hmac but key given", key: testKey, tamper: func(t *testing.T, l []string) []string { return l },
			wantLine: 1, want: "line 1 has no hmac"},
		{name: "wrong key", keyed: true, key: otherKey, tamper: func(t *testing.T, l []string) []string { return l },
			wantLine: 1, want: "line 1 HMAC mismatch"},
		{name: "hmac removed", keyed: true, key: testKey, tamper: func(t *testing.T, l []string) []string {
			l[7] = l[7][:strings.LastIndex(l[7], hmacField)] + "}"
			return l
		}, wantLine: 8, want: "line 8 has no hmac"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := plain
			if tc.keyed {
				src = keyed
			}
			orig := readLines(t, src)
			path := filepath.Join(t.TempDir(), "audit.log")
			writeLines(t, path, tc.tamper(t, slices.Clone(orig)))
			opts := VerifyOptions{Key: tc.key}
			if tc.anchorAt > 0 {
				opts.ExpectHead = &Anchor{Seq: uint64(tc.anchorAt), Hash: lineHash(orig[tc.anchorAt-1])}
			}
			res, err := Verify(context.Background(), []string{path}, opts)
			if tc.wantLine == 0 {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if res.Records == 0 {
					t.Fatal("nothing verified")
				}
				return
			}
			var be *BreakError
			if !errors.As(err, &be) || !errors.Is(err, ErrBroken) {
				t.Fatalf("Verify: %v, want a BreakError", err)
			}
			if be.File != path || be.Line != tc.wantLine || !strings.Contains(be.Reason, tc.want) {
				t.Fatalf("got  %v\nwant %s:%d: %s", err, path, tc.wantLine, tc.want)
			}
		})
	}
}

// TestVerifyRotatedFiles breaks a log across rotated files: an edited line
// in the middle file, an edited last line of a middle file (caught by the
// next file's first line), a missing middle file.
func TestVerifyRotatedFiles(t *testing.T) {
	build := func(t *testing.T) (string, []string) {
		path := filepath.Join(t.TempDir(), "audit.log")
		w := newTestWriter(t, Config{Path: path, MaxSize: 4096, Keep: 100, OnFull: OnFullBlock})
		for i := 1; i <= 120; i++ {
			w.Write(testRecord(i))
		}
		if err := w.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		files, err := Files(path)
		if err != nil {
			t.Fatal(err)
		}
		if len(files) < 4 || files[len(files)-1] != path || files[len(files)-2] != path+".1" {
			t.Fatalf("files %v", files)
		}
		return path, files
	}
	t.Run("edited line in a middle file", func(t *testing.T) {
		path, files := build(t)
		mid := path + ".2"
		lines := readLines(t, mid)
		lines[3] = edit(t, lines[3])
		writeLines(t, mid, lines)
		_, err := Verify(context.Background(), files, VerifyOptions{})
		var be *BreakError
		if !errors.As(err, &be) || be.File != mid || be.Line != 4 || !strings.Contains(be.Reason, "line 4 edited (prev hash of line 5") {
			t.Fatalf("Verify: %v", err)
		}
	})
	t.Run("edited last line of a middle file", func(t *testing.T) {
		path, files := build(t)
		mid := path + ".2"
		lines := readLines(t, mid)
		lines[len(lines)-1] = edit(t, lines[len(lines)-1])
		writeLines(t, mid, lines)
		_, err := Verify(context.Background(), files, VerifyOptions{})
		var be *BreakError
		want := "edited (prev hash of " + path + ".1:1 does not match)"
		if !errors.As(err, &be) || be.File != mid || be.Line != len(lines) || !strings.Contains(be.Reason, want) {
			t.Fatalf("Verify: %v, want %s:%d: ...%s", err, mid, len(lines), want)
		}
	})
	t.Run("torn line in a middle file", func(t *testing.T) {
		path, files := build(t)
		mid := path + ".2"
		data, err := os.ReadFile(mid)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(mid, data[:len(data)-10], 0o600); err != nil {
			t.Fatal(err)
		}
		n := len(readLines(t, mid))
		_, err = Verify(context.Background(), files, VerifyOptions{})
		var be *BreakError
		if !errors.As(err, &be) || be.File != mid || be.Line != n || !strings.Contains(be.Reason, "incomplete") {
			t.Fatalf("Verify: %v", err)
		}
	})
	t.Run("missing middle file", func(t *testing.T) {
		path, files := build(t)
		if err := os.Remove(path + ".2"); err != nil {
			t.Fatal(err)
		}
		_, err := Files(path)
		var be *BreakError
		if !errors.As(err, &be) || be.File != path+".2" || !strings.Contains(err.Error(), "rotated file missing") {
			t.Fatalf("Files: %v", err)
		}
		// Given the files explicitly, the sequence jump names the gap.
		files = slices.DeleteFunc(files, func(f string) bool { return f == path+".2" })
		_, err = Verify(context.Background(), files, VerifyOptions{})
		if !errors.As(err, &be) || be.File != path+".1" || be.Line != 1 || !strings.Contains(be.Reason, "missing between "+path+".3 and "+path+".1") {
			t.Fatalf("Verify: %v", err)
		}
	})
}

// TestParseAnchor checks the --expect-head form.
func TestParseAnchor(t *testing.T) {
	h := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"12:" + h, true},
		{"12:" + strings.ToUpper(h), true},
		{"0:" + h, false},
		{"12" + h, false},
		{"x:" + h, false},
		{"12:" + h[:10], false},
		{"12:" + strings.Repeat("zz", 32), false},
	} {
		a, err := ParseAnchor(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("ParseAnchor(%q): %v", tc.in, err)
		}
		if tc.ok && (a.Seq != 12 || a.Hash != h || a.String() != "12:"+h) {
			t.Errorf("ParseAnchor(%q) = %+v", tc.in, a)
		}
	}
}

// BenchmarkVerify measures Verify per line on a 10,000-line keyed log.
func BenchmarkVerify(b *testing.B) {
	path := filepath.Join(b.TempDir(), "audit.log")
	writeLog(b, path, testKey, 10_000)
	b.ResetTimer()
	for range b.N {
		res, err := Verify(context.Background(), []string{path}, VerifyOptions{Key: testKey})
		if err != nil || res.Records != 10_000 {
			b.Fatal(res, err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/10_000, "ns/line")
}
