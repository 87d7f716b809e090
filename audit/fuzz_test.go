package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzAppendString checks that every string encodes to a JSON string that
// decodes to the same text (invalid UTF-8 as U+FFFD, as encoding/json).
func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "a\"b\\c", "\x00\x1f\n\r\t", "\u2028\u2029", "\xff\xfe", "☃𝄞"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		enc := appendString(nil, s)
		var got string
		if err := json.Unmarshal(enc, &got); err != nil {
			t.Fatalf("%q encodes to invalid JSON %q: %v", s, enc, err)
		}
		want := strings.ToValidUTF8(s, "\ufffd")
		if utf8.ValidString(s) && got != s || !utf8.ValidString(s) && got != decodeLikeJSON(s) {
			t.Fatalf("%q round-trips to %q (want %q)", s, got, want)
		}
		if bytes.IndexByte(enc, '\n') >= 0 {
			t.Fatalf("%q encodes with a raw newline", s)
		}
	})
}

// decodeLikeJSON replaces each invalid byte with U+FFFD, as encoding/json
// does when it marshals a string.
func decodeLikeJSON(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b.WriteRune('\ufffd')
		} else {
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

// FuzzVerify feeds arbitrary bytes, and a real log with arbitrary bytes
// spliced in, to Verify: it must not panic, and a log it passes must have
// as many records as complete lines.
func FuzzVerify(f *testing.F) {
	dir := f.TempDir()
	seed := filepath.Join(dir, "seed.log")
	writeLog(f, seed, nil, 5)
	good, err := os.ReadFile(seed)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good, uint16(0), []byte{})
	f.Add(good, uint16(100), []byte("x"))
	f.Add([]byte("{\"seq\":1}\n"), uint16(0), []byte{})
	f.Fuzz(func(t *testing.T, base []byte, at uint16, splice []byte) {
		pos := min(int(at), len(base))
		data := append(append(append([]byte{}, base[:pos]...), splice...), base[pos:]...)
		path := filepath.Join(t.TempDir(), "audit.log")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		res, err := Verify(context.Background(), []string{path}, VerifyOptions{})
		if err != nil {
			return
		}
		if complete := int64(bytes.Count(data, []byte{'\n'})); res.Records != complete {
			t.Fatalf("passed with %d records for %d complete lines", res.Records, complete)
		}
	})
}
