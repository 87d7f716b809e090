package rules

import (
	"errors"
	"strings"
	"testing"
)

func TestParseMask(t *testing.T) {
	for _, tc := range []struct {
		in, want string // want is the canonical String()
	}{
		{"null", "null"},
		{" email ", "email"},
		{"deny", "deny"},
		{"constant('n/a')", "constant('n/a')"},
		{"constant( 'it''s, ok' )", "constant('it''s, ok')"},
		{"constant('')", "constant('')"},
		{"constant(0)", "constant('0')"},
		{"constant(-1.5e3)", "constant('-1.5e3')"},
		{"partial", "partial(first=0,last=0,fill='*')"},
		{"partial()", "partial(first=0,last=0,fill='*')"},
		{"partial(last=4)", "partial(first=0,last=4,fill='*')"},
		{"partial(fill='#', first=1, last=2)", "partial(first=1,last=2,fill='#')"},
		{"partial(fill='''')", "partial(first=0,last=0,fill='''')"},
		{"partial(fill=',')", "partial(first=0,last=0,fill=',')"},
		{"partial(fill='•')", "partial(first=0,last=0,fill='•')"},
		{"truncate(year)", "truncate(year)"},
		{"truncate( month )", "truncate(month)"},
		{"round(-4)", "round(-4)"},
		{"round(2)", "round(2)"},
	} {
		m, err := ParseMask(tc.in)
		if err != nil {
			t.Errorf("ParseMask(%q): %v", tc.in, err)
			continue
		}
		if got := m.String(); got != tc.want {
			t.Errorf("ParseMask(%q) = %s, want %s", tc.in, got, tc.want)
		}
		again, err := ParseMask(m.String())
		if err != nil || again != m {
			t.Errorf("ParseMask(%q) does not read back: %+v, %v", m.String(), again, err)
		}
	}
}

func TestParseMaskErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"emial", `unknown mask "emial" (want null, constant('v'), partial(first=N,last=M,fill='*'), email, truncate(year|month|day), round(N) or deny)`},
		{"Email", `unknown mask "Email" (want null, constant('v'), partial(first=N,last=M,fill='*'), email, truncate(year|month|day), round(N) or deny)`},
		{"", `unknown mask "" (want null, constant('v'), partial(first=N,last=M,fill='*'), email, truncate(year|month|day), round(N) or deny)`},
		{"email()", `mask "email()": email takes no arguments`},
		{"constant", `mask "constant": want constant('value')`},
		{"constant(n/a)", `mask "constant(n/a)": want constant('value'): not a quoted string`},
		{"constant('a','b')", `mask "constant('a','b')": want constant('value')`},
		{"constant('it's')", `mask "constant('it's')": unterminated quoted string`},
		{"partial(last=4", `mask "partial(last=4": missing closing parenthesis`},
		{"partial(lats=4)", `mask "partial(lats=4)": unknown argument "lats" (want first, last or fill)`},
		{"partial(last=-1)", `mask "partial(last=-1)": last: want an integer from 0 to 1000, got "-1"`},
		{"partial(first=x)", `mask "partial(first=x)": first: want an integer from 0 to 1000, got "x"`},
		{"partial(last=1,last=2)", `mask "partial(last=1,last=2)": last given twice`},
		{"partial(4)", `mask "partial(4)": want name=value, got "4"`},
		{"partial(fill='**')", `mask "partial(fill='**')": fill: want one quoted printable character, e.g. fill='*'`},
		{"partial(fill=*)", `mask "partial(fill=*)": fill: want one quoted printable character, e.g. fill='*'`},
		{"partial(fill='\n')", "mask \"partial(fill='\\n')\": fill: want one quoted printable character, e.g. fill='*'"},
		{"partial(last=4,)", `mask "partial(last=4,)": empty argument`},
		{"truncate(week)", `mask "truncate(week)": want truncate(year), truncate(month) or truncate(day)`},
		{"truncate", `mask "truncate": want truncate(year), truncate(month) or truncate(day)`},
		{"round", `mask "round": want round(N), e.g. round(-4)`},
		{"round(1.5)", `mask "round(1.5)": want round(N) with an integer N from -1000 to 1000`},
		{"round(1001)", `mask "round(1001)": want round(N) with an integer N from -1000 to 1000`},
	} {
		_, err := ParseMask(tc.in)
		if err == nil || err.Error() != tc.want {
			t.Errorf("ParseMask(%q)\n got: %v\nwant: %s", tc.in, err, tc.want)
		}
	}
}

func TestMaskSQL(t *testing.T) {
	for _, tc := range []struct{ mask, typ, want string }{
		{"null", "date", `NULL::date`},
		{"constant('n/a')", "character varying(2)", `(CASE WHEN (t."c") IS NULL THEN NULL ELSE 'n/' END)::character varying(2)`},
		{`constant('a\b')`, "text", `(CASE WHEN (t."c") IS NULL THEN NULL ELSE E'a\\b' END)::text`},
		{"constant('2000-01-01 00:30:00+02')", "timestamp with time zone", `(CASE WHEN (t."c") IS NULL THEN NULL ELSE '1999-12-31 22:30:00+00' END)::timestamp with time zone`},
		{"constant(' 7 ')", "bigint", `(CASE WHEN (t."c") IS NULL THEN NULL ELSE '7' END)::bigint`},
		{"partial(last=4)", "text", `(CASE WHEN char_length((t."c")::text) <= 4 THEN repeat('*', char_length((t."c")::text)) ELSE left((t."c")::text, 0) || repeat('*', char_length((t."c")::text) - 4) || right((t."c")::text, 4) END)::text`},
		{"truncate(year)", "timestamp without time zone", `(date_trunc('year', (t."c")))::timestamp without time zone`},
		{"truncate(day)", "date", `((t."c"))::date`},
		{"round(-4)", "numeric", `(round((t."c"), -4))::numeric`},
		{"round(0)", "numeric(5,2)", `(CASE WHEN abs(round((t."c"), 0)) < 1e3 THEN round((t."c"), 0) ELSE trunc((t."c"), 0) END)::numeric(5,2)`},
		{"round(-3)", "integer", `(CASE WHEN round((t."c")::numeric, -3) BETWEEN -2147483648 AND 2147483647 THEN round((t."c")::numeric, -3) ELSE trunc((t."c")::numeric, -3) END)::integer`},
	} {
		m, err := ParseMask(tc.mask)
		if err != nil {
			t.Fatal(err)
		}
		got, err := m.SQL(`t."c"`, tc.typ)
		if err != nil || got != tc.want {
			t.Errorf("%s on %s:\n got: %s (%v)\nwant: %s", tc.mask, tc.typ, got, err, tc.want)
		}
	}
}

func TestMaskTypeErrors(t *testing.T) {
	for _, tc := range []struct{ mask, typ, want string }{
		{"email", "date", "mask email does not apply to type date: it masks text, character varying, character and citext; for numbers use round(N), constant('v') or null, and store identifiers such as card or national id numbers as text"},
		{"partial(last=4)", "bigint", "mask partial(first=0,last=4,fill='*') does not apply to type bigint: it masks text, character varying, character and citext; for numbers use round(N), constant('v') or null, and store identifiers such as card or national id numbers as text"},
		{"partial", "jsonb", "mask partial(first=0,last=0,fill='*') does not apply to type jsonb: it masks text, character varying, character and citext; for numbers use round(N), constant('v') or null, and store identifiers such as card or national id numbers as text"},
		{"truncate(year)", "text", "mask truncate(year) does not apply to type text: it applies to date, timestamp and timestamp with time zone"},
		{"truncate(day)", "time without time zone", "mask truncate(day) does not apply to type time without time zone: it applies to date, timestamp and timestamp with time zone"},
		{"round(-4)", "text", "mask round(-4) does not apply to type text: it applies to smallint, integer, bigint, numeric, real and double precision"},
		{"round(0)", "money", "mask round(0) does not apply to type money: it applies to smallint, integer, bigint, numeric, real and double precision"},
		{"round(0)", "integer[]", "mask round(0) does not apply to type integer[]: it applies to smallint, integer, bigint, numeric, real and double precision"},
	} {
		m, err := ParseMask(tc.mask)
		if err != nil {
			t.Fatal(err)
		}
		_, err = m.SQL("c", tc.typ)
		if !errors.Is(err, ErrMaskType) || err.Error() != tc.want {
			t.Errorf("%s on %s: SQL error\n got: %v\nwant: %s", tc.mask, tc.typ, err, tc.want)
		}
		if _, err := m.Apply([]byte("x"), tc.typ); !errors.Is(err, ErrMaskType) {
			t.Errorf("%s on %s: Apply error %v, want ErrMaskType", tc.mask, tc.typ, err)
		}
	}
}

func TestMaskConstantErrors(t *testing.T) {
	for _, tc := range []struct{ mask, typ, want string }{
		{"constant('n/a')", "integer", "mask constant('n/a'): the constant is not a valid integer: want an integer from -2147483648 to 2147483647"},
		{"constant(40000)", "smallint", "mask constant('40000'): the constant is not a valid smallint: want an integer from -32768 to 32767"},
		{"constant('1000')", "numeric(5,2)", "mask constant('1000'): the constant is not a valid numeric(5,2): out of range"},
		{"constant('Infinity')", "numeric(5,2)", "mask constant('Infinity'): the constant is not a valid numeric(5,2): a numeric(5,2) cannot hold infinity"},
		{"constant('1e39')", "real", "mask constant('1e39'): the constant is not a valid real: out of range"},
		{"constant('1e-50')", "real", "mask constant('1e-50'): the constant is not a valid real: out of range (underflow)"},
		{"constant('0x10')", "double precision", "mask constant('0x10'): the constant is not a valid double precision: want a decimal number, NaN or Infinity"},
		{"constant('maybe')", "boolean", "mask constant('maybe'): the constant is not a valid boolean: want true or false"},
		{"constant('xyz')", "uuid", "mask constant('xyz'): the constant is not a valid uuid: want xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"},
		{"constant('2000-02-30')", "date", "mask constant('2000-02-30'): the constant is not a valid date: want YYYY-MM-DD[ BC], infinity, -infinity or epoch"},
		{"constant('01/02/2000')", "date", "mask constant('01/02/2000'): the constant is not a valid date: want YYYY-MM-DD[ BC], infinity, -infinity or epoch"},
		{"constant('300000-01-01')", "timestamp without time zone", "mask constant('300000-01-01'): the constant is not a valid timestamp without time zone: out of range"},
		{"constant('2000-01-01 00:00:00.5')", "timestamp(0) without time zone", "mask constant('2000-01-01 00:00:00.5'): the constant is not a valid timestamp(0) without time zone: more fractional digits than the type keeps"},
		{"constant('2000-01-01 00:00:00+02')", "timestamp without time zone", "mask constant('2000-01-01 00:00:00+02'): the constant is not a valid timestamp without time zone: want YYYY-MM-DD[ HH:MM:SS[.ffffff]][ BC], infinity, -infinity or epoch"},
	} {
		m, err := ParseMask(tc.mask)
		if err != nil {
			t.Fatal(err)
		}
		_, err = m.SQL("c", tc.typ)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s on %s:\n got: %v\nwant: %s", tc.mask, tc.typ, err, tc.want)
		}
	}
}

func TestDeny(t *testing.T) {
	m, err := ParseMask("deny")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.SQL("c", "text"); !errors.Is(err, ErrDenied) {
		t.Errorf("SQL: %v, want ErrDenied", err)
	}
	if _, err := m.Apply([]byte("x"), "text"); !errors.Is(err, ErrDenied) {
		t.Errorf("Apply: %v, want ErrDenied", err)
	}
	if _, err := (Mask{}).SQL("c", "text"); err == nil {
		t.Error("the zero Mask has an SQL form")
	}
}

// TestApply pins the documented semantics; TestMaskAgreement proves the
// SQL form computes the same.
func TestApply(t *testing.T) {
	for _, tc := range []struct {
		mask, typ, in string
		want          *string // nil is NULL
	}{
		{"email", "text", "alice@example.com", ptr("a***@example.com")},
		{"email", "text", "al@example.com", ptr("a***@example.com")},
		{"email", "text", "a@example.com", ptr("***@example.com")},
		{"email", "text", "@example.com", ptr("***@example.com")},
		{"email", "text", "a@b@example.com", ptr("a***@example.com")},
		{"email", "text", "no-at-sign", ptr("**********")},
		{"email", "text", "ü@x", ptr("***@x")},
		{"email", "text", "üü@x", ptr("ü***@x")},
		{"email", "character varying(8)", "bob@example.com", ptr("b***@exa")},
		{"email", "character(20)", "bob@example.com", ptr("b***@example.com    ")},
		{"partial(last=4)", "text", "123-45-6789", ptr("*******6789")},
		{"partial(last=4)", "text", "6789", ptr("****")},
		{"partial(first=1,last=1)", "text", "ab", ptr("**")},
		{"partial(first=1,last=1)", "text", "abc", ptr("a*c")},
		{"partial(first=1,last=1)", "text", "", ptr("")},
		{"partial(first=1,last=1,fill='#')", "text", "e\u0301xy👍🏽", ptr("e####\U0001F3FD")},
		{"partial(first=1)", "character(6)", "abc   ", ptr("a**   ")},
		{"partial", "bpchar", "ab  ", ptr("**")},
		{"null", "integer", "5", nil},
		{"constant('n/a')", "character(5)", "xyz  ", ptr("n/a  ")},
		{"constant('n/a')", "character varying(2)", "xy", ptr("n/")},
		{"constant('1.5')", "numeric(10,2)", "7.00", ptr("1.50")},
		{"constant('1.5e-3')", "numeric", "7", ptr("0.0015")},
		{"constant('1e15')", "double precision", "7", ptr("1e+15")},
		{"constant('tRuE')", "boolean", "f", ptr("t")},
		{`constant('{"a":1}')`, "jsonb", "{}", ptr(`{"a":1}`)},
		{"truncate(year)", "date", "1980-05-17", ptr("1980-01-01")},
		{"truncate(month)", "date", "0044-03-15 BC", ptr("0044-03-01 BC")},
		{"truncate(year)", "date", "infinity", ptr("infinity")},
		{"truncate(year)", "date", "5874897-12-31", ptr("5874897-01-01")},
		{"truncate(month)", "timestamp without time zone", "2000-02-29 12:34:56.789", ptr("2000-02-01 00:00:00")},
		{"truncate(year)", "timestamp with time zone", "2000-01-01 00:30:00+02", ptr("1999-01-01 00:00:00+00")},
		{"truncate(day)", "timestamp with time zone", "4713-11-24 12:00:00+00 BC", ptr("4713-11-24 00:00:00+00 BC")},
		{"truncate(year)", "timestamp(0) without time zone", "294277-01-01 00:00:00", ptr("294277-01-01 00:00:00")},
		{"round(-4)", "integer", "90123", ptr("90000")},
		{"round(-4)", "integer", "-95000", ptr("-100000")},
		{"round(-3)", "integer", "2147483647", ptr("2147483000")},
		{"round(-3)", "integer", "-2147483648", ptr("-2147483000")},
		{"round(-4)", "integer", "2147483647", ptr("2147480000")},
		{"round(-19)", "bigint", "9223372036854775807", ptr("0")},
		{"round(-18)", "bigint", "9223372036854775807", ptr("9000000000000000000")},
		{"round(-3)", "bigint", "9223372036854775807", ptr("9223372036854775000")},
		{"round(2)", "smallint", "-32768", ptr("-32768")},
		{"round(0)", "numeric(5,2)", "999.99", ptr("999.00")},
		{"round(0)", "numeric(5,2)", "998.50", ptr("999.00")},
		{"round(1)", "numeric(5,2)", "-0.04", ptr("0.00")},
		{"round(-2)", "numeric", "-149.99", ptr("-100")},
		{"round(3)", "numeric", "1.5", ptr("1.500")},
		{"round(-2)", "numeric(5,-2)", "12300", ptr("12300")},
		{"round(-4)", "numeric", "NaN", ptr("NaN")},
		{"round(0)", "double precision", "2.5", ptr("3")},
		{"round(0)", "double precision", "-0.4", ptr("0")},
		{"round(2)", "double precision", "0.125", ptr("0.13")},
		{"round(0)", "double precision", "1.7976931348623157e+308", ptr("1.7976931348623157e+308")},
		{"round(-35)", "real", "3.4028235e+38", ptr("3.4028235e+38")},
		{"round(-2)", "real", "-Infinity", ptr("-Infinity")},
		{"round(0)", "double precision", "55999614383755696", ptr("5.5999614383755696e+16")},
	} {
		m, err := ParseMask(tc.mask)
		if err != nil {
			t.Fatal(err)
		}
		got, err := m.Apply([]byte(tc.in), tc.typ)
		if err != nil {
			t.Errorf("%s on %s %q: %v", tc.mask, tc.typ, tc.in, err)
			continue
		}
		if (got == nil) != (tc.want == nil) || tc.want != nil && string(got) != *tc.want {
			t.Errorf("%s on %s %q = %s, want %s", tc.mask, tc.typ, tc.in, show(got), showPtr(tc.want))
		}
	}
}

func TestApplyBadInput(t *testing.T) {
	for _, tc := range []struct{ mask, typ, in string }{
		{"round(-2)", "integer", "secret-1234"},
		{"round(-2)", "numeric", "1,5"},
		{"round(-2)", "double precision", "secret"},
		{"truncate(year)", "date", "secret"},
		{"truncate(year)", "timestamp with time zone", "2000-13-01 00:00:00+00"},
		{"email", "text", "secret\xff"},
	} {
		m, err := ParseMask(tc.mask)
		if err != nil {
			t.Fatal(err)
		}
		_, err = m.Apply([]byte(tc.in), tc.typ)
		if err == nil {
			t.Errorf("%s on %s accepts %q", tc.mask, tc.typ, tc.in)
		} else if strings.Contains(err.Error(), "secret") {
			t.Errorf("%s on %s: the error quotes the value: %v", tc.mask, tc.typ, err)
		}
	}
}

func TestFloatText(t *testing.T) {
	for _, tc := range []struct {
		f    float64
		bits int
		want string
	}{
		{1e100, 64, "1e+100"},
		{1e-5, 64, "1e-05"},
		{1e-4, 64, "0.0001"},
		{1e14, 64, "100000000000000"},
		{1e15, 64, "1e+15"},
		{123456789012345678, 64, "1.2345678901234568e+17"},
		{float64(float32(1234567)), 32, "1.234567e+06"},
		{123456, 32, "123456"},
		{5e-324, 64, "5e-324"},
		{0.1, 64, "0.1"},
		{float64(float32(0.1)), 32, "0.1"},
	} {
		if got := floatText(tc.f, tc.bits); got != tc.want {
			t.Errorf("floatText(%v, %d) = %s, want %s", tc.f, tc.bits, got, tc.want)
		}
	}
}

func ptr(s string) *string { return &s }

func showPtr(s *string) string {
	if s == nil {
		return "NULL"
	}
	return show([]byte(*s))
}
