package integration

// The canary scan of the adversarial suite: every canary value of
// testdata/adversarial/data_raw.sql in the encodings an attacker could use
// to smuggle it out (case changes, reversal, separators dropped, hex,
// base64 at every alignment, hashes, binary wire formats, other date
// styles), searched for in everything the proxy sent to a client.

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

// advForm is one encoding of one canary.
type advForm struct {
	label string // canary/form, e.g. "ssn/base64[1]"
	b     []byte
	fold  bool // match ASCII case-insensitively
}

// advLeak is a form found in the proxy's output.
type advLeak struct {
	form    string
	context string
	echo    bool // the client sent the same bytes itself
}

// Canary values (data_raw.sql). The masked forms keep the last four
// characters of national ids and the domain of e-mail addresses by design,
// so the scan looks for what masking must hide.
const (
	advCanarySSN     = "CANARY-SSN-918273645"
	advCanaryInherit = "INHERIT-CANARY-7654321"
	advCanaryDeny    = "CANARY-DENY-55501"
	advCanaryEmail   = "canary.person@leak.example"
	advCanarySalary  = "987654.32"
)

var advCanaryBirth = time.Date(1971, 3, 14, 0, 0, 0, 0, time.UTC)

// advEmails are the e-mail canaries: the customer's and those in the
// partitions of events (one in a partition created during the run).
var advEmails = map[string]string{
	"email":           advCanaryEmail,
	"email-partition": "partition.canary@leak.example",
	"email-old":       "old.partition@leak.example",
	"email-team":      "team.partition@leak.example",
	"email-late":      "late.partition@leak.example",
}

var advForms = advBuildForms()

// b64Aligned returns the part of the base64 encoding of s that does not
// depend on its neighbours when s starts k bytes (0..2) into a 3-byte group.
func b64Aligned(enc *base64.Encoding, s []byte, k int) string {
	in := append(make([]byte, k), s...)
	in = append(in, 0, 0, 0)
	out := enc.EncodeToString(in)
	start := (8*k + 5) / 6
	end := 8 * (k + len(s)) / 6
	return out[start:end]
}

func reverseString(s string) string {
	r := []rune(s)
	slices.Reverse(r)
	return string(r)
}

// textForms are the encodings of a text canary.
func textForms(name, v string) []advForm {
	b := []byte(v)
	forms := []advForm{
		{name + "/plain", b, true},
		{name + "/reversed", []byte(reverseString(v)), true},
		{name + "/hex", []byte(hex.EncodeToString(b)), true},
		{name + "/md5", []byte(fmt.Sprintf("%x", md5.Sum(b))), true},
		{name + "/sha224", []byte(fmt.Sprintf("%x", sha256.Sum224(b))), true},
		{name + "/sha256", []byte(fmt.Sprintf("%x", sha256.Sum256(b))), true},
		{name + "/sha384", []byte(fmt.Sprintf("%x", sha512.Sum384(b))), true},
		{name + "/sha512", []byte(fmt.Sprintf("%x", sha512.Sum512(b))), true},
	}
	if stripped := strings.NewReplacer("-", "", ".", "", "@", "", " ", "", "_", "").Replace(v); stripped != v {
		forms = append(forms, advForm{name + "/no-separators", []byte(stripped), true})
	}
	for k := 0; k < 3; k++ {
		forms = append(forms,
			advForm{fmt.Sprintf("%s/base64[%d]", name, k), []byte(b64Aligned(base64.RawStdEncoding, b, k)), false},
			advForm{fmt.Sprintf("%s/base64url[%d]", name, k), []byte(b64Aligned(base64.RawURLEncoding, b, k)), false},
		)
	}
	return forms
}

// digitForms are the digits of a national id that masking hides: all of
// them, reversed, and every window of five.
func digitForms(name, digits string) []advForm {
	forms := []advForm{
		{name + "/digits", []byte(digits), false},
		{name + "/digits-reversed", []byte(reverseString(digits)), false},
	}
	for i := 0; i+5 <= len(digits); i++ {
		forms = append(forms, advForm{fmt.Sprintf("%s/digits:%s", name, digits[i:i+5]), []byte(digits[i : i+5]), false})
	}
	return forms
}

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func be64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func advBuildForms() []advForm {
	var forms []advForm
	forms = append(forms, textForms("ssn", advCanarySSN)...)
	forms = append(forms, digitForms("ssn", "918273645")...)
	forms = append(forms, textForms("ssn-inherit", advCanaryInherit)...)
	forms = append(forms, digitForms("ssn-inherit", "7654321")...)
	forms = append(forms, textForms("deny", advCanaryDeny)...)
	forms = append(forms, advForm{"deny/digits", []byte("55501"), false})
	for name, addr := range advEmails {
		forms = append(forms, textForms(name, addr)...)
		local, _, _ := strings.Cut(addr, "@")
		forms = append(forms, textForms(name+"/local", local)...)
	}
	// salary 987654.32: text, and the binary wire formats of numeric
	// (base-10000 digits 98 7654 3200; 98 7654 when cast to scale 0),
	// float8, float4, int4 and int8 (987654).
	forms = append(forms, textForms("salary", advCanarySalary)...)
	for _, s := range []string{"98765432", "987654", "987,654", "987654,32"} {
		forms = append(forms, advForm{"salary/" + s, []byte(s), false})
	}
	forms = append(forms,
		advForm{"salary/numeric-binary", []byte{0x00, 0x62, 0x1d, 0xe6, 0x0c, 0x80}, false},
		advForm{"salary/numeric-binary-int", []byte{0x00, 0x62, 0x1d, 0xe6}, false},
		advForm{"salary/float8-binary", be64(math.Float64bits(987654.32)), false},
		advForm{"salary/float4-binary", be32(math.Float32bits(987654.32)), false},
		advForm{"salary/int4-binary", be32(987654), false},
		advForm{"salary/int8-binary", be64(987654), false},
	)
	// birth_date 1971-03-14: every DateStyle, compact, epoch, Julian day,
	// and the binary date (days since 2000-01-01) and timestamp (µs).
	days := int32(advCanaryBirth.Sub(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)).Hours() / 24)
	for _, s := range []string{"1971-03-14", "03-14-1971", "14-03-1971", "03/14/1971", "14/03/1971", "14.03.1971",
		"1971.03.14", "1971/03/14", "19710314", "Mar 14 1971", "14 Mar 1971", "March 14, 1971",
		fmt.Sprint(advCanaryBirth.Unix()), fmt.Sprint(2451545 + int(days))} {
		forms = append(forms, advForm{"birth/" + s, []byte(s), true})
	}
	forms = append(forms, textForms("birth", "1971-03-14")...)
	forms = append(forms,
		advForm{"birth/date-binary", be32(uint32(days)), false},
		advForm{"birth/timestamp-binary", be64(uint64(int64(days) * 86400 * 1e6)), false},
	)
	return forms
}

// asciiLower lowers ASCII letters only, leaving binary data intact.
func asciiLower(b []byte) []byte {
	out := make([]byte, len(b))
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		out[i] = c
	}
	return out
}

// advNormalize removes line breaks, including escaped ones (COPY text,
// JSON), which base64 output and long values may carry.
func advNormalize(b []byte) []byte {
	b = bytes.ReplaceAll(b, []byte(`\n`), nil)
	b = bytes.ReplaceAll(b, []byte(`\r`), nil)
	b = bytes.ReplaceAll(b, []byte("\n"), nil)
	return bytes.ReplaceAll(b, []byte("\r"), nil)
}

// advHaystack is a capture prepared for searching.
type advHaystack struct{ raw, lower, norm, normLower []byte }

func newAdvHaystack(b []byte) advHaystack {
	n := advNormalize(b)
	return advHaystack{raw: b, lower: asciiLower(b), norm: n, normLower: asciiLower(n)}
}

// find returns the offset of f in h and the text around it, or -1.
func (h advHaystack) find(f advForm) (int, string) {
	needle, hays := f.b, [][]byte{h.raw, h.norm}
	if f.fold {
		needle, hays = asciiLower(f.b), [][]byte{h.lower, h.normLower}
	}
	for i, hay := range hays {
		if at := bytes.Index(hay, needle); at >= 0 {
			src := [][]byte{h.raw, h.norm}[i]
			lo, hi := max(0, at-30), min(len(src), at+len(needle)+30)
			return at, string(src[lo:hi])
		}
	}
	return -1, ""
}

// advScan returns every canary form in fromServer. A form the client sent
// itself (in its SQL text or parameters) is marked as an echo.
func advScan(fromServer, fromClient []byte) []advLeak {
	srv := newAdvHaystack(fromServer)
	var cli *advHaystack
	var out []advLeak
	for _, f := range advForms {
		at, ctx := srv.find(f)
		if at < 0 {
			continue
		}
		if cli == nil {
			h := newAdvHaystack(fromClient)
			cli = &h
		}
		echo, _ := cli.find(f)
		out = append(out, advLeak{form: f.label, context: ctx, echo: echo >= 0})
	}
	return out
}

// advFound runs sql as login on path through the proxy and returns the
// canary forms found in what the proxy sent back.
func advFound(t *testing.T, f *advFixture, login string, p advPath, sql string) map[string]bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := &advCase{name: "control", sql: sql, login: login}
	rs, tap, err := advSession(ctx, f, c, p, true)
	if err != nil {
		t.Fatalf("%s: %v", login, err)
	}
	if e, ok := firstAttackError(rs); ok {
		t.Fatalf("%s: %s failed: %s %s", login, sql, e.code, e.msg)
	}
	fromServer, fromClient := tap.captured()
	found := map[string]bool{}
	for _, l := range advScan(fromServer, fromClient) {
		if !l.echo {
			found[l.form] = true
		}
	}
	return found
}

// foundCanary reports whether any form of canary (the part of a label
// before the slash) was found.
func foundCanary(found map[string]bool, canary string) bool {
	for l := range found {
		if strings.HasPrefix(l, canary+"/") {
			return true
		}
	}
	return false
}

// advControls proves the scan and the reference comparison can fail: the
// raw login (adv_dpo) must show every canary, in each encoding the scan
// claims to detect; adv_support must see the e-mail canary and nothing
// else; and a raw answer must differ from the masked reference.
func advControls(t *testing.T, f *advFixture) {
	t.Run("dpo-every-path", func(t *testing.T) {
		for _, p := range queryPaths {
			found := advFound(t, f, advDPO, p, "SELECT * FROM customers ORDER BY id")
			for _, canary := range []string{"ssn", "email", "deny", "salary", "birth"} {
				if !foundCanary(found, canary) {
					t.Errorf("%s: the scan did not find canary %s in adv_dpo's raw answer", p.name, canary)
				}
			}
		}
	})
	t.Run("dpo-encodings", func(t *testing.T) {
		for _, c := range []struct {
			sql  string
			path advPath
			form string
		}{
			{"SELECT lower(ssn) FROM customers WHERE id = 1", pathSimple, "ssn/plain"},
			{"SELECT upper(email) FROM customers WHERE id = 1", pathSimple, "email/plain"},
			{"SELECT reverse(ssn) FROM customers WHERE id = 1", pathSimple, "ssn/reversed"},
			{"SELECT replace(ssn, '-', '') FROM customers WHERE id = 1", pathSimple, "ssn/no-separators"},
			{"SELECT encode(ssn::bytea, 'hex') FROM customers WHERE id = 1", pathSimple, "ssn/hex"},
			{"SELECT upper(encode(ssn::bytea, 'hex')) FROM customers WHERE id = 1", pathSimple, "ssn/hex"},
			{"SELECT ssn::bytea FROM customers WHERE id = 1", pathSimple, "ssn/hex"},
			{"SELECT encode(ssn::bytea, 'base64') FROM customers WHERE id = 1", pathSimple, "ssn/base64[0]"},
			{"SELECT encode(('x' || ssn)::bytea, 'base64') FROM customers WHERE id = 1", pathSimple, "ssn/base64[1]"},
			{"SELECT encode(('xy' || ssn)::bytea, 'base64') FROM customers WHERE id = 1", pathSimple, "ssn/base64[2]"},
			{"SELECT translate(encode(('x' || email)::bytea, 'base64'), '+/', '-_') FROM customers WHERE id = 1", pathSimple, "email/base64url[1]"},
			{"SELECT encode(convert_to(repeat('x', 70) || email, 'UTF8'), 'base64') FROM customers WHERE id = 1", pathSimple, "email/base64[1]"},
			{"SELECT md5(ssn) FROM customers WHERE id = 1", pathSimple, "ssn/md5"},
			{"SELECT upper(md5(ssn)) FROM customers WHERE id = 1", pathSimple, "ssn/md5"},
			{"SELECT encode(sha256(ssn::bytea), 'hex') FROM customers WHERE id = 1", pathSimple, "ssn/sha256"},
			{"SELECT encode(sha512(convert_to(email, 'UTF8')), 'hex') FROM customers WHERE id = 1", pathSimple, "email/sha512"},
			{"SELECT regexp_replace(ssn, '[^0-9]', '', 'g') FROM customers WHERE id = 1", pathSimple, "ssn/digits"},
			{"SELECT substr(ssn, 13, 5) FROM customers WHERE id = 1", pathSimple, "ssn/digits:18273"},
			{"SELECT split_part(email, '@', 1) FROM customers WHERE id = 1", pathSimple, "email/local/plain"},
			{"SELECT secret_note FROM customers WHERE id = 1", pathSimple, "deny/plain"},
			{"SELECT salary FROM customers WHERE id = 1", pathSimple, "salary/plain"},
			{"SELECT salary * 100 FROM customers WHERE id = 1", pathSimple, "salary/98765432"},
			{"SELECT salary FROM customers WHERE id = 1", pathExtBinary, "salary/numeric-binary"},
			{"SELECT salary::numeric(10,0) FROM customers WHERE id = 1", pathExtBinary, "salary/numeric-binary-int"},
			{"SELECT salary::float8 FROM customers WHERE id = 1", pathExtBinary, "salary/float8-binary"},
			{"SELECT salary::real FROM customers WHERE id = 1", pathExtBinary, "salary/float4-binary"},
			{"SELECT salary::int FROM customers WHERE id = 1", pathExtBinary, "salary/int4-binary"},
			{"SELECT salary::bigint FROM customers WHERE id = 1", pathExtBinary, "salary/int8-binary"},
			{"SELECT birth_date FROM customers WHERE id = 1", pathSimple, "birth/1971-03-14"},
			{"SELECT birth_date FROM customers WHERE id = 1", pathExtBinary, "birth/date-binary"},
			{"SELECT birth_date::timestamp FROM customers WHERE id = 1", pathExtBinary, "birth/timestamp-binary"},
			{"SELECT birth_date FROM customers WHERE id = 1", pathBinaryCursor, "birth/date-binary"},
			{"SELECT to_char(birth_date, 'DD.MM.YYYY') FROM customers WHERE id = 1", pathSimple, "birth/14.03.1971"},
			{"SELECT to_char(birth_date, 'MM/DD/YYYY') FROM customers WHERE id = 1", pathSimple, "birth/03/14/1971"},
			{"SELECT extract(epoch FROM birth_date) FROM customers WHERE id = 1", pathSimple, "birth/" + fmt.Sprint(advCanaryBirth.Unix())},
			{"SELECT to_char(birth_date, 'J') FROM customers WHERE id = 1", pathSimple, "birth/2441025"},
			{"SELECT histogram_bounds::text FROM pg_stats WHERE tablename = 'customers' AND attname = 'ssn'", pathSimple, "ssn/plain"},
			{"SELECT ssn FROM staff_archive", pathSimple, "ssn-inherit/plain"},
			{"SELECT customer_email FROM events_2024", pathSimple, "email-partition/plain"},
			{"SELECT customer_email FROM shadow.events_old", pathCopyQuery, "email-old/plain"},
		} {
			if found := advFound(t, f, advDPO, c.path, c.sql); !found[c.form] {
				t.Errorf("the scan missed form %s in adv_dpo's answer to %s (%s); found %v", c.form, c.sql, c.path.name, found)
			}
		}
	})
	t.Run("support", func(t *testing.T) {
		for _, p := range queryPaths {
			for _, sql := range []string{
				"SELECT * FROM customers ORDER BY id",
				"SELECT row_to_json(c), md5(c.ssn), reverse(c.ssn) FROM customers c",
			} {
				found := advFound(t, f, advSupport, p, sql)
				if !foundCanary(found, "email") {
					t.Errorf("%s: adv_support (email raw) did not get the e-mail canary for %s", p.name, sql)
				}
				for _, canary := range []string{"ssn", "deny", "salary", "birth"} {
					if foundCanary(found, canary) {
						t.Errorf("%s: adv_support got canary %s for %s: %v", p.name, canary, sql, found)
					}
				}
			}
		}
	})
	t.Run("reference-detects-raw", func(t *testing.T) {
		// The comparison with adv_ref must fail for a raw answer.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		raw := &advCase{sql: "SELECT * FROM customers ORDER BY id", login: advDPO}
		got, _, err := advSession(ctx, f, raw, pathSimple, true)
		if err != nil {
			t.Fatal(err)
		}
		ref, _, err := advSession(ctx, f, &advCase{sql: raw.sql}, pathSimple, false)
		if err != nil {
			t.Fatal(err)
		}
		if advTranscript(got, true) == advTranscript(ref, true) {
			t.Fatalf("adv_dpo's raw answer equals the masked reference:\n%s", advTranscript(got, true))
		}
	})
}
