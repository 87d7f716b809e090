package rules

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgveil/pgveil/internal/pgcluster"
)

var seed = flag.Uint64("seed", 1, "seed of the random corpus of TestMaskAgreement (0: time-based)")

// agreeCase is a set of column types sharing a corpus and a list of masks.
type agreeCase struct {
	types  []string
	values []*string // input texts; nil is NULL
	masks  []string
}

// TestMaskAgreement proves the SQL and Go forms of every mask agree: for
// each column type, each corpus value and each mask, the text PostgreSQL
// prints for the SQL form equals Apply on the value's text, and the SQL
// form has exactly the column's type (format_type of the result's oid and
// typmod).
func TestMaskAgreement(t *testing.T) {
	if _, err := pgcluster.FindBinDir(""); err != nil {
		t.Skipf("PostgreSQL is not installed: %v", err)
	}
	s := *seed
	if s == 0 {
		s = uint64(time.Now().UnixNano())
	}
	t.Logf("corpus seed %d (rerun with go test ./rules -run TestMaskAgreement -args -seed=%d)", s, s)
	rng := rand.New(rand.NewPCG(s, s))

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := pgcluster.Start(ctx, pgcluster.Config{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Error(err)
		}
	})
	conn := connect(ctx, t, c, "UTC")
	other := connect(ctx, t, c, "Asia/Kathmandu")
	if _, err := conn.Exec(ctx, "CREATE EXTENSION citext"); err != nil {
		t.Fatal(err)
	}

	checked := 0
	for i, ac := range agreeCases(rng) {
		for _, typ := range ac.types {
			table := fmt.Sprintf("corpus_%d_%s", i, strings.NewReplacer(" ", "_", "(", "_", ")", "", ",", "_", "-", "m", "[]", "_array").Replace(typ))
			if _, err := conn.Exec(ctx, fmt.Sprintf("CREATE TABLE %s (id serial PRIMARY KEY, v %s)", table, typ)); err != nil {
				t.Fatal(err)
			}
			stored := 0
			for _, v := range ac.values {
				// Values that do not fit the type (out of range) are left out.
				if _, err := conn.Exec(ctx, fmt.Sprintf("INSERT INTO %s (v) VALUES (CAST($1::text AS %s))", table, typ), pgx.QueryExecModeSimpleProtocol, v); err == nil {
					stored++
				}
			}
			if stored < 10 {
				t.Fatalf("%s: only %d corpus values stored", typ, stored)
			}
			for _, ms := range ac.masks {
				m, err := ParseMask(ms)
				if err != nil {
					t.Fatal(err)
				}
				checked += checkMask(ctx, t, conn, other, table, typ, m)
			}
		}
	}
	t.Logf("%d (value, type, mask) combinations agree", checked)
	if checked < 10000 {
		t.Errorf("only %d combinations checked", checked)
	}
}

func connect(ctx context.Context, t *testing.T, c *pgcluster.Cluster, tz string) *pgx.Conn {
	cfg, err := pgx.ParseConfig(c.URL("postgres", "", "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["TimeZone"] = tz
	cfg.RuntimeParams["DateStyle"] = "ISO"
	cfg.RuntimeParams["extra_float_digits"] = "1"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// checkMask compares both forms of m over the corpus in table and returns
// the number of values compared.
func checkMask(ctx context.Context, t *testing.T, conn, other *pgx.Conn, table, typ string, m Mask) int {
	t.Helper()
	expr, err := m.SQL(`c."v"`, typ)
	if err != nil {
		if m.Kind != MaskConstant || errors.Is(err, ErrMaskType) {
			t.Errorf("%s on %s: %v", m, typ, err)
			return 0
		}
		// A refused constant must be one the server refuses too (except
		// date/time edge years, which pgveil refuses conservatively).
		_, perr := conn.Exec(ctx, "SELECT CAST($1::text AS "+typ+")", pgx.QueryExecModeSimpleProtocol, m.Value)
		if fam := parsePGType(typ).fam; perr == nil && fam != famDate && fam != famTimestamp && fam != famTimestamptz {
			t.Errorf("%s on %s: pgveil refuses (%v) but PostgreSQL accepts the constant", m, typ, err)
		}
		return 0
	}
	rows, err := conn.Query(ctx, "SELECT c.id, c.v, "+expr+" FROM "+table+" c ORDER BY c.id", pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		t.Errorf("%s on %s: %s: %v", m, typ, expr, err)
		return 0
	}
	type row struct{ in, out []byte }
	var got []row
	for rows.Next() {
		raw := rows.RawValues()
		got = append(got, row{clone(raw[1]), clone(raw[2])})
	}
	fd := rows.FieldDescriptions()[2]
	if err := rows.Err(); err != nil {
		t.Errorf("%s on %s: %s: %v", m, typ, expr, err)
		return 0
	}
	var resultType string
	if err := conn.QueryRow(ctx, "SELECT format_type($1::oid, $2::integer)", fd.DataTypeOID, fd.TypeModifier).Scan(&resultType); err != nil {
		t.Fatal(err)
	}
	if resultType != typ {
		t.Errorf("%s on %s: the SQL form has type %s", m, typ, resultType)
	}
	var wrong int
	for _, r := range got {
		if r.in == nil {
			if r.out != nil {
				t.Errorf("%s on %s: NULL became %q", m, typ, r.out)
			}
			continue
		}
		want, err := m.Apply(r.in, typ)
		if err != nil {
			t.Errorf("%s on %s: Apply(%q): %v", m, typ, r.in, err)
			continue
		}
		if !bytes.Equal(want, r.out) || (want == nil) != (r.out == nil) {
			if wrong++; wrong <= 5 {
				t.Errorf("%s on %s of %q: SQL gives %s, Apply gives %s", m, typ, r.in, show(r.out), show(want))
			}
		}
	}
	if strings.Contains(typ, "with time zone") {
		sameInstant(ctx, t, conn, other, table, typ, m, expr)
	}
	return len(got)
}

// sameInstant checks that a timestamptz mask yields the same instants in
// sessions with different TimeZone settings.
func sameInstant(ctx context.Context, t *testing.T, conn, other *pgx.Conn, table, typ string, m Mask, expr string) {
	t.Helper()
	q := "SELECT string_agg(coalesce(extract(epoch FROM " + expr + ")::text, 'null'), ',' ORDER BY c.id) FROM " + table + " c"
	var a, b string
	if err := conn.QueryRow(ctx, q).Scan(&a); err != nil {
		t.Fatal(err)
	}
	if err := other.QueryRow(ctx, q).Scan(&b); err != nil {
		t.Fatal(err)
	}
	if a != b {
		t.Errorf("%s on %s depends on the session TimeZone:\nUTC       %s\nKathmandu %s", m, typ, a, b)
	}
}

func clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte{}, b...)
}

func show(b []byte) string {
	if b == nil {
		return "NULL"
	}
	return strconv.Quote(string(b))
}

func strs(vs ...string) []*string {
	out := make([]*string, len(vs))
	for i := range vs {
		out[i] = &vs[i]
	}
	return out
}

// agreeCases is the corpus: hand-picked edge values plus random ones.
func agreeCases(rng *rand.Rand) []agreeCase {
	nullValue := []*string{nil}
	var cases []agreeCase

	// Text.
	text := append(nullValue, strs("", "a", "ab", "abc", "abcd", "abcde", "hello world", "  lead", "trail  ",
		"héllo", "e\u0301te\u0301", "👍🏽", "x👍🏽y", "日本語テキスト", "O'Brien", `back\slash`, "tab\there", "line\nbreak",
		"alice@example.com", "a@b.c", "ab@example.com", "@example.com", "abc@", "@", "@@", "a@b@c.com",
		"no-at-sign", "👍@例え.jp", "ü@x", "é\u0301@x.org", "first.last+tag@sub.example.co.uk", "123456789",
		"4111111111111111", "123-45-6789")...)
	alphabet := []rune("abcXYZ019 @.-_'\\é\u0301👍🏽日\n")
	for range 60 {
		n := rng.IntN(14)
		r := make([]rune, n)
		for j := range r {
			r[j] = alphabet[rng.IntN(len(alphabet))]
		}
		s := string(r)
		text = append(text, &s)
	}
	cases = append(cases, agreeCase{
		types:  []string{"text", "character varying", "character varying(5)", "character(3)", "character(10)", "bpchar", "citext"},
		values: text,
		masks: []string{"null", "constant('n/a')", "constant('')", `constant('x''y\z')`, "constant('  padded  ')",
			"partial", "partial(last=4)", "partial(first=1,last=2)", "partial(first=2,fill='#')",
			"partial(first=3, last=3, fill='•')", "partial(last=1,fill=' ')", "partial(first=20)", "email"},
	})

	// Integers.
	ints := append(nullValue, strs("0", "1", "-1", "5", "-5", "15", "-15", "49999", "50000", "-50000", "90123",
		"32767", "-32768", "2147483647", "-2147483648", "2147483500", "-2147483500", "9223372036854775807",
		"-9223372036854775808", "9223372036854775000", "123456789", "-987654321")...)
	for range 60 {
		n := rng.Int64() >> rng.IntN(63)
		if rng.IntN(2) == 0 {
			n = -n
		}
		s := strconv.FormatInt(n, 10)
		ints = append(ints, &s)
	}
	cases = append(cases, agreeCase{
		types:  []string{"smallint", "integer", "bigint"},
		values: ints,
		masks: []string{"null", "constant('0')", "constant(' -7 ')", "constant(40000)", "round(-4)", "round(-3)",
			"round(-1)", "round(0)", "round(3)", "round(-5)", "round(-10)", "round(-18)", "round(-19)", "round(-20)", "round(-1000)"},
	})

	// Numeric.
	nums := append(nullValue, strs("0", "0.5", "-0.5", "1.5", "2.5", "-2.5", "0.004", "-0.004", "999.99", "-999.99",
		"99.995", "12345678.91", "90123", "123456789012345678901234567890.123456789", "1e-20", "-1e-20",
		"0.000000000123456789", "99999", "-99999", "NaN", "Infinity", "-Infinity",
		"0.0012", "-0.0099", "0.00995", "0.005", "-0.005", "0.00005", "0.0049", "0.0051", "-0.0001")...)
	for range 60 {
		var b strings.Builder
		if rng.IntN(2) == 0 {
			b.WriteByte('-')
		}
		b.WriteString(strconv.FormatUint(rng.Uint64()>>rng.IntN(64), 10))
		if rng.IntN(3) > 0 {
			b.WriteString(".")
			for range 1 + rng.IntN(12) {
				b.WriteByte(byte('0' + rng.IntN(10)))
			}
		}
		s := b.String()
		nums = append(nums, &s)
	}
	cases = append(cases, agreeCase{
		types:  []string{"numeric", "numeric(10,2)", "numeric(5,2)", "numeric(3,0)", "numeric(20,10)", "numeric(5,-2)", "numeric(2,4)"},
		values: nums,
		masks: []string{"null", "constant('0')", "constant('1.005')", "constant('12.5e-1')", "constant('-0.00')",
			"round(-4)", "round(-2)", "round(-1)", "round(0)", "round(1)", "round(2)", "round(5)", "round(-1000)", "round(40)"},
	})

	// Floats.
	floats := append(nullValue, strs("0", "-0", "1", "-1", "0.5", "1.5", "2.5", "-2.5", "0.1", "123456.789",
		"1e15", "1e16", "1.5e300", "1.7976931348623157e308", "-1.7976931348623157e308", "2.2250738585072014e-308",
		"5e-324", "3.4028235e38", "-3.4028235e38", "1.4e-45", "1.17549435e-38", "NaN", "Infinity", "-Infinity",
		"9007199254740993", "0.000123456789", "12345.6789", "99999.5", "-49999.5", "1e-5", "123456", "1234567")...)
	for range 80 {
		var s string
		if rng.IntN(2) == 0 {
			f := math.Float64frombits(rng.Uint64())
			s = strconv.FormatFloat(f, 'g', -1, 64)
		} else {
			f := math.Float32frombits(rng.Uint32())
			s = strconv.FormatFloat(float64(f), 'g', -1, 32)
		}
		if s == "+Inf" || s == "-Inf" {
			continue
		}
		floats = append(floats, &s)
	}
	cases = append(cases, agreeCase{
		types:  []string{"real", "double precision"},
		values: floats,
		masks: []string{"null", "constant('1.5')", "constant('-0')", "constant('1e10')", "constant('NaN')",
			"constant('-Infinity')", "constant('3.4028235e38')", "constant('1e39')", "constant('1e-50')", "constant('0.1')",
			"round(0)", "round(2)", "round(-2)", "round(-4)", "round(-35)", "round(-38)", "round(-300)",
			"round(-307)", "round(-308)", "round(320)", "round(-1000)", "round(1000)"},
	})

	// Dates.
	dates := append(nullValue, strs("0001-01-01", "0001-12-31 BC", "1999-12-31", "2000-02-29", "1970-01-01", "epoch",
		"infinity", "-infinity", "4713-11-24 BC", "4713-11-25 BC", "4713-12-15 BC", "4712-06-01 BC", "0044-03-15 BC",
		"5874897-12-31", "294276-12-31", "294277-01-01", "2024-12-31", "1900-02-28", "2100-03-01")...)
	for range 60 {
		y := 1 + rng.IntN(3000)
		if rng.IntN(5) == 0 {
			y = 1 + rng.IntN(4712)
		}
		s := fmt.Sprintf("%04d-%02d-%02d", y, 1+rng.IntN(12), 1+rng.IntN(28))
		if rng.IntN(5) == 0 {
			s += " BC"
		}
		dates = append(dates, &s)
	}
	cases = append(cases, agreeCase{
		types:  []string{"date"},
		values: dates,
		masks: []string{"null", "constant('2000-01-01')", "constant('epoch')", "constant('infinity')",
			"constant('0044-03-15 BC')", "truncate(year)", "truncate(month)", "truncate(day)"},
	})

	// Timestamps.
	stamps := append(nullValue, strs("2000-02-29 12:34:56.789", "1999-12-31 23:59:59.999999", "0001-01-01 00:00:00",
		"4713-11-24 00:00:00 BC", "4713-11-24 12:00:00 BC", "0044-03-15 12:00:00.5 BC", "294276-12-31 23:59:59.999999",
		"infinity", "-infinity", "epoch", "2000-01-01 00:30:00+02", "1999-12-31 23:30:00-05:30", "2024-06-30 23:59:59.5",
		"1970-01-01 00:00:00.000001", "2000-03-01 00:00:00")...)
	for range 60 {
		s := fmt.Sprintf("%04d-%02d-%02d %02d:%02d:%02d.%06d", 1+rng.IntN(3000), 1+rng.IntN(12), 1+rng.IntN(28),
			rng.IntN(24), rng.IntN(60), rng.IntN(60), rng.IntN(1000000))
		if rng.IntN(3) == 0 {
			s += fmt.Sprintf("%+03d", rng.IntN(27)-12)
		}
		stamps = append(stamps, &s)
	}
	cases = append(cases, agreeCase{
		types:  []string{"timestamp without time zone", "timestamp(0) without time zone", "timestamp(3) without time zone", "timestamp with time zone", "timestamp(2) with time zone"},
		values: stamps,
		masks: []string{"null", "constant('2000-01-01 12:00:00')", "constant('2000-01-01 12:00:00.25')", "constant('epoch')",
			"constant('-infinity')", "constant('0044-03-15 BC')", "truncate(year)", "truncate(month)", "truncate(day)"},
	})
	cases = append(cases, agreeCase{
		types:  []string{"timestamp with time zone", "timestamp(2) with time zone"},
		values: stamps,
		masks:  []string{"constant('2000-01-01 00:30:00+02')", "constant('2000-01-01 00:30:00-05:30')"},
	})

	// Types only null and constant apply to.
	uuids := append(nullValue, strs("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "00000000-0000-0000-0000-000000000000")...)
	for range 10 {
		s := fmt.Sprintf("%016x%016x", rng.Uint64(), rng.Uint64())
		uuids = append(uuids, &s)
	}
	cases = append(cases, agreeCase{
		types:  []string{"uuid"},
		values: uuids,
		masks:  []string{"null", "constant('00000000-0000-0000-0000-000000000000')", "constant('A0EEBC999C0B4EF8BB6D6BB9BD380A11')"},
	})
	cases = append(cases, agreeCase{
		types:  []string{"boolean"},
		values: append(nullValue, strs("t", "f", "true", "false", "yes", "no", "on", "off", "1", "0")...),
		masks:  []string{"null", "constant('false')", "constant('YES')"},
	})
	cases = append(cases, agreeCase{
		types:  []string{"jsonb"},
		values: append(nullValue, strs("{}", "[1]", `{"a":1}`, "1", "null", "true", `"x"`, "[]", "2", "[[]]", `{"b": [1, {"c": null}]}`)...),
		masks:  []string{"null", `constant('{"a": 1}')`},
	})
	cases = append(cases, agreeCase{
		types:  []string{"interval"},
		values: append(nullValue, strs("1 day", "2 hours", "3 mons", "1 year", "00:00:01", "-1 day", "4 days", "5 mins", "6 secs", "7 years")...),
		masks:  []string{"null", "constant('1 day')"},
	})
	cases = append(cases, agreeCase{
		types:  []string{"text[]", "bytea"},
		values: append(nullValue, strs("{}", "{a,b}", "{x}", `{"a b",NULL}`, "{1,2,3}", `\x00`, `\xdeadbeef`, "{}", "{{a},{b}}", "{q}", "{z}")...),
		masks:  []string{"null"},
	})
	return cases
}
