package rules

import (
	"strconv"
	"strings"
)

// family groups the PostgreSQL types that one mask treats alike.
type family int

const (
	famOther       family = iota // any type masks know nothing about
	famText                      // text, character varying[(n)], citext
	famBpchar                    // character(n), bpchar: blank-padded
	famInt                       // smallint, integer, bigint
	famNumeric                   // numeric[(p[,s])]
	famFloat                     // real, double precision
	famDate                      // date
	famTimestamp                 // timestamp[(p)] without time zone
	famTimestamptz               // timestamp[(p)] with time zone
	famBool                      // boolean
	famUUID                      // uuid
)

// pgType is a column type as PostgreSQL's format_type() prints it, sorted
// into the family that decides which masks apply and how.
type pgType struct {
	name string // as given, used verbatim in casts
	fam  family
	// length is the n of character varying(n) and character(n); 0 means
	// unbounded.
	length int
	// bits is 16, 32 or 64 for integers and 32 or 64 for floats.
	bits int
	// constrained is true for numeric(p,s), with precision and scale
	// (numeric(p) is numeric(p,0)); PostgreSQL 15 allows s < 0 and s > p.
	constrained      bool
	precision, scale int
	// frac is the fractional-second digits a timestamp keeps (0-6).
	frac int
}

// textual reports whether partial and email apply to t.
func (t pgType) textual() bool { return t.fam == famText || t.fam == famBpchar }

// parsePGType sorts a format_type() string into its family. Unknown types
// (arrays, domains, jsonb, interval, ...) are famOther; only null and
// constant apply to them.
func parsePGType(typ string) pgType {
	t := pgType{name: typ}
	s := strings.TrimSpace(typ)
	switch s {
	case "text", "character varying", "citext":
		t.fam = famText
		return t
	case "bpchar", "character":
		t.fam = famBpchar
		return t
	case "smallint":
		t.fam, t.bits = famInt, 16
		return t
	case "integer":
		t.fam, t.bits = famInt, 32
		return t
	case "bigint":
		t.fam, t.bits = famInt, 64
		return t
	case "numeric":
		t.fam = famNumeric
		return t
	case "real":
		t.fam, t.bits = famFloat, 32
		return t
	case "double precision":
		t.fam, t.bits = famFloat, 64
		return t
	case "date":
		t.fam = famDate
		return t
	case "timestamp without time zone":
		t.fam, t.frac = famTimestamp, 6
		return t
	case "timestamp with time zone":
		t.fam, t.frac = famTimestamptz, 6
		return t
	case "boolean":
		t.fam = famBool
		return t
	case "uuid":
		t.fam = famUUID
		return t
	}
	// citext outside the search_path prints schema-qualified.
	if strings.HasSuffix(s, ".citext") && !strings.ContainsAny(s, `"() `) {
		t.fam = famText
		return t
	}
	if args, ok := typeArgs(s, "character varying"); ok && len(args) == 1 && args[0] > 0 {
		t.fam, t.length = famText, args[0]
		return t
	}
	if args, ok := typeArgs(s, "character"); ok && len(args) == 1 && args[0] > 0 {
		t.fam, t.length = famBpchar, args[0]
		return t
	}
	if args, ok := typeArgs(s, "numeric"); ok && (len(args) == 1 || len(args) == 2) && args[0] > 0 {
		t.fam, t.constrained, t.precision = famNumeric, true, args[0]
		if len(args) == 2 {
			t.scale = args[1]
		}
		return t
	}
	for _, z := range []struct {
		suffix string
		fam    family
	}{{" without time zone", famTimestamp}, {" with time zone", famTimestamptz}} {
		if base, ok := strings.CutSuffix(s, z.suffix); ok {
			if args, ok := typeArgs(base, "timestamp"); ok && len(args) == 1 && args[0] >= 0 && args[0] <= 6 {
				t.fam, t.frac = z.fam, args[0]
				return t
			}
		}
	}
	return t
}

// typeArgs parses "name(a,b,...)" into its integer arguments.
func typeArgs(s, name string) ([]int, bool) {
	rest, ok := strings.CutPrefix(s, name+"(")
	if !ok {
		return nil, false
	}
	rest, ok = strings.CutSuffix(rest, ")")
	if !ok {
		return nil, false
	}
	var args []int
	for _, a := range strings.Split(rest, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(a))
		if err != nil {
			return nil, false
		}
		args = append(args, n)
	}
	return args, true
}

// quoteLiteral quotes s as an SQL string literal. Like PostgreSQL's
// quote_literal it uses the E'...' form when s holds a backslash, so the
// literal means the same whatever standard_conforming_strings says.
func quoteLiteral(s string) string {
	if strings.Contains(s, `\`) {
		return `E'` + strings.NewReplacer(`\`, `\\`, `'`, `''`).Replace(s) + `'`
	}
	return `'` + strings.ReplaceAll(s, `'`, `''`) + `'`
}
