package rules

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Mask kinds, the values of Mask.Kind.
const (
	MaskNull     = "null"
	MaskConstant = "constant"
	MaskPartial  = "partial"
	MaskEmail    = "email"
	MaskTruncate = "truncate"
	MaskRound    = "round"
	MaskDeny     = "deny"
)

// maxPartialKeep bounds partial's first and last arguments.
const maxPartialKeep = 1000

// maxRoundPlaces bounds round's argument; PostgreSQL's round(numeric, int)
// clamps at NUMERIC_MAX_RESULT_SCALE (2000).
const maxRoundPlaces = 1000

// ErrDenied is returned by Mask.SQL and Mask.Apply for the deny mask:
// masked sessions may not reference the column at all.
var ErrDenied = errors.New("column is denied to masked sessions")

// ErrMaskType is wrapped by the errors of Mask.SQL and Mask.Apply when a
// mask does not make sense for a column's type (email on a date, round on
// text, ...).
var ErrMaskType = errors.New("mask does not apply to the column type")

// Mask is a masking function, parsed from a class's "mask:" string. Its
// two forms, SQL (an expression the server evaluates) and Apply (Go code
// on the text representation of a value), agree: for every value, Apply
// returns the text the server prints for the SQL form, with DateStyle
// ISO, TimeZone UTC and extra_float_digits 1. Both keep NULL as NULL and
// preserve the column type.
//
// The kinds, and the types each applies to, are:
//
//   - null: NULL, for every type.
//   - constant(v): v cast to the column type (NULL stays NULL), for every
//     type into which v casts. For text, character varying, character, integer, numeric,
//     real, double precision, boolean, uuid, date, timestamp and timestamptz
//     columns v is checked and written in the type's canonical output form
//     (a timestamptz without an offset is UTC); for other types v is used
//     as written, so the Go form agrees only if v is in the type's output
//     form (e.g. '{"a": 1}' for jsonb).
//   - partial(first=F,last=L,fill=C): for text types (text, character
//     varying, character, citext). Keeps the first F and last L characters
//     (Unicode code points, like PostgreSQL's left, right and char_length
//     on UTF-8) and replaces each other character by the single character
//     C (default '*'); a value of F+L characters or fewer is replaced
//     entirely, so short values never leak. F and L default to 0.
//   - email: for text types. The domain is what follows the last "@"; the
//     local part is what precedes it. The result is the local part's
//     first character, "***", "@" and the domain (a***@example.com); a
//     local part of fewer than two characters is not kept at all
//     (***@example.com), and a value without "@" is masked entirely as by
//     partial(first=0,last=0).
//   - truncate(year|month|day): for date, timestamp and timestamptz. The
//     start of the value's year, month or day, like date_trunc; a
//     timestamptz is truncated in UTC, whatever the session TimeZone, so
//     the result is an instant both forms agree on. Infinity stays.
//   - round(N): for smallint, integer, bigint, numeric, real and double
//     precision. round(x, N) on numeric: half away from zero, N decimal
//     places, N < 0 rounding to tens, hundreds, ... (round(-4): 90123 →
//     90000). Integer types are rounded as numeric and cast back; real and
//     double precision are cast to numeric first, which keeps 6 and 15
//     significant digits (PostgreSQL's float-to-numeric casts). When the
//     rounded value does not fit the column type (round(-3) of integer
//     2147483647, round(0) of numeric(5,2) 999.99), the value is truncated
//     toward zero to N places instead (2147483000, 999.00), which always
//     fits; for floats, a value beyond the largest finite value becomes
//     that value. NaN and ±Infinity stay.
//   - deny: no value at all. SQL and Apply return ErrDenied.
//
// Character columns (character(n)) are masked without their trailing
// blanks, as PostgreSQL compares them, and the result is cast back, which
// pads it; a result longer than a character varying(n) or character(n)
// column is cut to n characters, as an explicit cast does.
type Mask struct {
	// Kind is one of MaskNull, MaskConstant, MaskPartial, MaskEmail,
	// MaskTruncate, MaskRound and MaskDeny.
	Kind string
	// Value is constant's v, unquoted.
	Value string
	// First and Last are the characters partial keeps at each end.
	First, Last int
	// Fill is the character partial writes for every hidden one.
	Fill rune
	// Unit is truncate's "year", "month" or "day".
	Unit string
	// Places is round's N.
	Places int
}

// ParseMask parses a mask as written in a policy file: null, email, deny,
// constant('v') (or a bare number, constant(0)), partial(first=F, last=L,
// fill='C') with every argument optional (bare partial hides everything),
// truncate(year|month|day) or round(N). Keywords are lower case; blanks
// around punctuation are allowed.
func ParseMask(s string) (Mask, error) {
	src := strings.TrimSpace(s)
	name, rest := src, ""
	if i := strings.IndexByte(src, '('); i >= 0 {
		name, rest = strings.TrimSpace(src[:i]), src[i:]
		if !strings.HasSuffix(rest, ")") {
			return Mask{}, fmt.Errorf("mask %q: missing closing parenthesis", s)
		}
	}
	var args []string
	if rest != "" {
		var err error
		if args, err = splitArgs(rest[1 : len(rest)-1]); err != nil {
			return Mask{}, fmt.Errorf("mask %q: %v", s, err)
		}
	}
	m := Mask{Kind: name}
	noArgs := func() error {
		if rest != "" {
			return fmt.Errorf("mask %q: %s takes no arguments", s, name)
		}
		return nil
	}
	switch name {
	case MaskNull, MaskEmail, MaskDeny:
		return m, noArgs()
	case MaskConstant:
		if len(args) != 1 {
			return Mask{}, fmt.Errorf("mask %q: want constant('value')", s)
		}
		v, err := unquote(args[0])
		if err != nil {
			if _, _, ok := parseDecimal(args[0]); !ok {
				return Mask{}, fmt.Errorf("mask %q: want constant('value'): %v", s, err)
			}
			v = args[0]
		}
		if strings.IndexByte(v, 0) >= 0 || !utf8.ValidString(v) {
			return Mask{}, fmt.Errorf("mask %q: the constant must be valid UTF-8 without NUL", s)
		}
		m.Value = v
		return m, nil
	case MaskPartial:
		m.Fill = '*'
		seen := map[string]bool{}
		for _, a := range args {
			k, v, ok := strings.Cut(a, "=")
			k, v = strings.TrimSpace(k), strings.TrimSpace(v)
			if !ok {
				return Mask{}, fmt.Errorf("mask %q: want name=value, got %q", s, a)
			}
			if seen[k] {
				return Mask{}, fmt.Errorf("mask %q: %s given twice", s, k)
			}
			seen[k] = true
			switch k {
			case "first", "last":
				n, err := strconv.Atoi(v)
				if err != nil || n < 0 || n > maxPartialKeep {
					return Mask{}, fmt.Errorf("mask %q: %s: want an integer from 0 to %d, got %q", s, k, maxPartialKeep, v)
				}
				if k == "first" {
					m.First = n
				} else {
					m.Last = n
				}
			case "fill":
				f, err := unquote(v)
				r, size := utf8.DecodeRuneInString(f)
				if err != nil || size != len(f) || r == utf8.RuneError || r == 0 || !unicode.IsGraphic(r) {
					return Mask{}, fmt.Errorf("mask %q: fill: want one quoted printable character, e.g. fill='*'", s)
				}
				m.Fill = r
			default:
				return Mask{}, fmt.Errorf("mask %q: unknown argument %q (want first, last or fill)", s, k)
			}
		}
		return m, nil
	case MaskTruncate:
		if len(args) != 1 || (args[0] != "year" && args[0] != "month" && args[0] != "day") {
			return Mask{}, fmt.Errorf("mask %q: want truncate(year), truncate(month) or truncate(day)", s)
		}
		m.Unit = args[0]
		return m, nil
	case MaskRound:
		if len(args) != 1 {
			return Mask{}, fmt.Errorf("mask %q: want round(N), e.g. round(-4)", s)
		}
		n, err := strconv.Atoi(args[0])
		if err != nil || n < -maxRoundPlaces || n > maxRoundPlaces {
			return Mask{}, fmt.Errorf("mask %q: want round(N) with an integer N from %d to %d", s, -maxRoundPlaces, maxRoundPlaces)
		}
		m.Places = n
		return m, nil
	}
	return Mask{}, fmt.Errorf("unknown mask %q (want null, constant('v'), partial(first=N,last=M,fill='*'), email, truncate(year|month|day), round(N) or deny)", s)
}

// splitArgs splits a comma-separated argument list, keeping commas inside
// single-quoted strings, and trims each argument.
func splitArgs(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var args []string
	start, quoted := 0, false
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\'':
			quoted = !quoted
		case s[i] == ',' && !quoted:
			args = append(args, strings.TrimSpace(s[start:i]))
			start = i + 1
		}
	}
	if quoted {
		return nil, errors.New("unterminated quoted string")
	}
	args = append(args, strings.TrimSpace(s[start:]))
	for _, a := range args {
		if a == "" {
			return nil, errors.New("empty argument")
		}
	}
	return args, nil
}

// unquote reads an SQL-style single-quoted string, in which a doubled
// quote stands for one quote.
func unquote(s string) (string, error) {
	if len(s) < 2 || s[0] != '\'' || s[len(s)-1] != '\'' {
		return "", errors.New("not a quoted string")
	}
	inner := s[1 : len(s)-1]
	if strings.Contains(strings.ReplaceAll(inner, "''", ""), "'") {
		return "", errors.New("a quote inside a quoted string must be doubled ('')")
	}
	return strings.ReplaceAll(inner, "''", "'"), nil
}

// String returns the mask in its canonical policy-file form, which
// ParseMask reads back to the same Mask.
func (m Mask) String() string {
	switch m.Kind {
	case MaskConstant:
		return "constant(" + quoteConst(m.Value) + ")"
	case MaskPartial:
		return fmt.Sprintf("partial(first=%d,last=%d,fill=%s)", m.First, m.Last, quoteConst(string(m.Fill)))
	case MaskTruncate:
		return "truncate(" + m.Unit + ")"
	case MaskRound:
		return "round(" + strconv.Itoa(m.Places) + ")"
	}
	return m.Kind
}

// quoteConst quotes s the way ParseMask unquotes it.
func quoteConst(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// typeError reports a mask applied to a type it does not support.
type typeError struct {
	mask Mask
	typ  string
	want string
}

func (e *typeError) Error() string {
	return fmt.Sprintf("mask %s does not apply to type %s: %s", e.mask, e.typ, e.want)
}

func (e *typeError) Unwrap() error { return ErrMaskType }

// check returns the mask's error for type t, if any.
func (m Mask) check(t pgType) error {
	switch m.Kind {
	case MaskDeny:
		return ErrDenied
	case MaskNull, MaskConstant:
		return nil
	case MaskPartial, MaskEmail:
		if !t.textual() {
			return &typeError{m, t.name, "it masks text, character varying, character and citext; for numbers use round(N), constant('v') or null, and store identifiers such as card or national id numbers as text"}
		}
		return nil
	case MaskTruncate:
		if t.fam != famDate && t.fam != famTimestamp && t.fam != famTimestamptz {
			return &typeError{m, t.name, "it applies to date, timestamp and timestamp with time zone"}
		}
		return nil
	case MaskRound:
		if t.fam != famInt && t.fam != famNumeric && t.fam != famFloat {
			return &typeError{m, t.name, "it applies to smallint, integer, bigint, numeric, real and double precision"}
		}
		return nil
	case "":
		return errors.New("no mask")
	}
	return fmt.Errorf("unknown mask kind %q", m.Kind)
}

// SQL returns the mask's SQL form for a column: an expression over col,
// an already-quoted SQL expression for the column (e.g. t."email"), whose
// type is typ as PostgreSQL's format_type() prints it (e.g. "character
// varying(20)", "numeric(10,2)", "timestamp with time zone"). The
// expression uses only built-in functions and operators, is NULL when
// col is NULL, ends with an explicit cast to typ so that it has the
// column's type, and embeds no secret. col and typ are inserted verbatim:
// they must come from the catalog, never from a client. The errors are
// ErrDenied for deny, an error wrapping ErrMaskType when the mask does not
// apply to typ, and an error when a constant does not cast to typ.
func (m Mask) SQL(col string, typ string) (string, error) {
	t := parsePGType(typ)
	if err := m.check(t); err != nil {
		return "", err
	}
	x := "(" + col + ")"
	cast := func(expr string) string { return "(" + expr + ")::" + typ }
	switch m.Kind {
	case MaskNull:
		return "NULL::" + typ, nil
	case MaskConstant:
		v, err := m.constant(t)
		if err != nil {
			return "", err
		}
		return cast("CASE WHEN " + x + " IS NULL THEN NULL ELSE " + quoteLiteral(v) + " END"), nil
	case MaskPartial:
		v := x + "::text"
		fill := quoteLiteral(string(m.Fill))
		keep := strconv.Itoa(m.First + m.Last)
		return cast(fmt.Sprintf("CASE WHEN char_length(%[1]s) <= %[2]s THEN repeat(%[3]s, char_length(%[1]s))"+
			" ELSE left(%[1]s, %[4]d) || repeat(%[3]s, char_length(%[1]s) - %[2]s) || right(%[1]s, %[5]d) END",
			v, keep, fill, m.First, m.Last)), nil
	case MaskEmail:
		v := x + "::text"
		domain := "reverse(split_part(reverse(" + v + "), '@', 1))"
		return cast(fmt.Sprintf("CASE WHEN strpos(%[1]s, '@') = 0 THEN repeat('*', char_length(%[1]s))"+
			" WHEN char_length(%[1]s) - char_length(%[2]s) > 2 THEN left(%[1]s, 1) || '***@' || %[2]s"+
			" ELSE '***@' || %[2]s END", v, domain)), nil
	case MaskTruncate:
		return cast(truncateSQL(x, t, m.Unit)), nil
	case MaskRound:
		return cast(roundSQL(x, t, m.Places)), nil
	}
	return "", fmt.Errorf("unknown mask kind %q", m.Kind)
}

// truncateSQL truncates x, of type t, to unit.
func truncateSQL(x string, t pgType, unit string) string {
	switch t.fam {
	case famDate:
		// make_date rather than date_trunc, which goes through timestamp
		// and fails for dates after 294276 AD.
		year := "extract(year FROM " + x + ")::integer"
		switch unit {
		case "year":
			return "CASE WHEN isfinite(" + x + ") THEN make_date(" + year + ", 1, 1) ELSE " + x + " END"
		case "month":
			return "CASE WHEN isfinite(" + x + ") THEN make_date(" + year + ", extract(month FROM " + x + ")::integer, 1) ELSE " + x + " END"
		}
		return x
	}
	expr := "date_trunc('" + unit + "', " + x + ")"
	limit := "'294276-12-31 23:59:59.999999'"
	if t.fam == famTimestamptz {
		expr = "date_trunc('" + unit + "', " + x + " AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
		limit = "'294276-12-31 23:59:59.999999+00'"
	}
	if t.frac < 6 {
		// A timestamp(p) rounds 294276-12-31 23:59:59.999999, the largest
		// timestamp, up to 294277-01-01 00:00:00, which PostgreSQL stores
		// but date_trunc and AT TIME ZONE refuse; that value is its own
		// truncation.
		expr = "CASE WHEN " + x + " > " + limit + " THEN " + x + " ELSE " + expr + " END"
	}
	return expr
}

// Largest finite floats as literals, for round's clamp: every numeric above
// them converts to the largest finite float or overflows.
const (
	maxFloat8Lit = "1.7976931348623157e+308"
	maxFloat4Lit = "3.4028235e+38"
)

// roundSQL rounds x, of type t, to n places.
func roundSQL(x string, t pgType, n int) string {
	places := strconv.Itoa(n)
	switch t.fam {
	case famInt:
		r := "round(" + x + "::numeric, " + places + ")"
		lo, hi := intBounds(t.bits)
		return fmt.Sprintf("CASE WHEN %s BETWEEN %s AND %s THEN %s ELSE trunc(%s::numeric, %s) END", r, lo, hi, r, x, places)
	case famFloat:
		r := "round(" + x + "::numeric, " + places + ")"
		lit, typ := maxFloat8Lit, "double precision"
		if t.bits == 32 {
			lit, typ = maxFloat4Lit, "real"
		}
		// NaN and infinities skip the numeric detour, which PostgreSQL
		// before 14 cannot take for infinities.
		return fmt.Sprintf("CASE WHEN %[1]s IN ('NaN', 'Infinity', '-Infinity') THEN %[1]s"+
			" WHEN %[2]s > %[3]s THEN '%[3]s'::%[4]s WHEN %[2]s < -%[3]s THEN '-%[3]s'::%[4]s"+
			" ELSE %[2]s::%[4]s END", x, r, lit, typ)
	}
	r := "round(" + x + ", " + places + ")"
	if !t.constrained {
		return r
	}
	// A numeric(p,s) holds absolute values below 10^(p-s).
	return fmt.Sprintf("CASE WHEN abs(%s) < 1e%d THEN %s ELSE trunc(%s, %s) END", r, t.precision-t.scale, r, x, places)
}

// intBounds returns the range of a bits-wide integer type as SQL text.
func intBounds(bits int) (string, string) {
	switch bits {
	case 16:
		return "-32768", "32767"
	case 32:
		return "-2147483648", "2147483647"
	}
	return "-9223372036854775808", "9223372036854775807"
}

// Apply is the mask's Go form. v is the text representation of a
// non-NULL value of type typ (format_type() spelling), as PostgreSQL
// prints it with DateStyle ISO, TimeZone UTC and extra_float_digits 1 and
// client_encoding UTF8; Apply returns the text PostgreSQL prints for the
// SQL form on that value under the same settings, or nil for NULL (the
// null mask). NULL input is the caller's: it stays NULL for every mask.
// The errors are those of SQL, plus an error for input that is not valid
// text of typ; they never quote the value.
func (m Mask) Apply(v []byte, typ string) ([]byte, error) {
	t := parsePGType(typ)
	if err := m.check(t); err != nil {
		return nil, err
	}
	bad := func(what string) error {
		return fmt.Errorf("mask %s: input is not valid %s text", m, what)
	}
	switch m.Kind {
	case MaskNull:
		return nil, nil
	case MaskConstant:
		c, err := m.constant(t)
		if err != nil {
			return nil, err
		}
		return []byte(c), nil
	case MaskPartial, MaskEmail:
		if !utf8.Valid(v) {
			return nil, bad("UTF-8")
		}
		s := string(v)
		if t.fam == famBpchar {
			s = strings.TrimRight(s, " ")
		}
		if m.Kind == MaskPartial {
			s = partial(s, m.First, m.Last, m.Fill)
		} else {
			s = email(s)
		}
		return []byte(fitText(s, t)), nil
	case MaskTruncate:
		st, err := parseStamp(string(v), t.fam)
		if err != nil {
			return nil, bad(typ)
		}
		return []byte(st.truncate(m.Unit).text(t.fam)), nil
	case MaskRound:
		out, ok := roundText(string(v), t, m.Places)
		if !ok {
			return nil, bad(typ)
		}
		return []byte(out), nil
	}
	return nil, fmt.Errorf("unknown mask kind %q", m.Kind)
}

// partial keeps the first and last characters of s and fills the rest.
func partial(s string, first, last int, fill rune) string {
	r := []rune(s)
	n := len(r)
	if n <= first+last {
		return strings.Repeat(string(fill), n)
	}
	return string(r[:first]) + strings.Repeat(string(fill), n-first-last) + string(r[n-last:])
}

// email masks the local part of an address; see Mask.
func email(s string) string {
	at := strings.LastIndexByte(s, '@')
	if at < 0 {
		return partial(s, 0, 0, '*')
	}
	local, domain := s[:at], s[at+1:]
	if utf8.RuneCountInString(local) < 2 {
		return "***@" + domain
	}
	_, size := utf8.DecodeRuneInString(local)
	return local[:size] + "***@" + domain
}

// fitText is what casting text s to the text type t prints: cut to t's
// length, then, for character(n), blank-padded to n.
func fitText(s string, t pgType) string {
	if t.length == 0 {
		return s
	}
	n := utf8.RuneCountInString(s)
	if n > t.length {
		s = string([]rune(s)[:t.length])
		n = t.length
	}
	if t.fam == famBpchar {
		s += strings.Repeat(" ", t.length-n)
	}
	return s
}

// roundText is round's Go form on the text s of a number of type t.
func roundText(s string, t pgType, n int) (string, bool) {
	switch t.fam {
	case famInt:
		i, err := strconv.ParseInt(s, 10, t.bits)
		if err != nil {
			return "", false
		}
		d := decimalFromInt(i)
		r := d.round(n)
		if !r.inInt(t.bits) {
			r = d.trunc(n)
		}
		return r.text(0), true
	case famFloat:
		f, err := strconv.ParseFloat(s, t.bits)
		if err != nil {
			return "", false
		}
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return floatText(f, t.bits), true
		}
		return floatText(decimalFromFloat(f, t.bits).round(n).float(t.bits), t.bits), true
	}
	switch s {
	case "NaN", "Infinity", "-Infinity":
		return s, true
	}
	d, _, ok := parseDecimal(s)
	if !ok {
		return "", false
	}
	r := d.round(n)
	if !t.constrained {
		return r.text(max(n, 0)), true
	}
	if !r.absBelowPow10(t.precision - t.scale) {
		r = d.trunc(n)
	}
	return r.text(max(t.scale, 0)), true
}
