package rules

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// floatSyntax is the decimal float input constant accepts; strtod's hex
// and other forms are refused so both forms read the same number.
var floatSyntax = regexp.MustCompile(`^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$`)

// uuidSyntax is the standard hyphenated form or 32 bare hex digits.
var uuidSyntax = regexp.MustCompile(`^([0-9a-fA-F]{8})-?([0-9a-fA-F]{4})-?([0-9a-fA-F]{4})-?([0-9a-fA-F]{4})-?([0-9a-fA-F]{12})$`)

// constant returns the constant's text as PostgreSQL prints it once cast
// to t, or an error if it does not cast. For types the Go form does not
// know the constant is returned as written.
func (m Mask) constant(t pgType) (string, error) {
	v := m.Value
	bad := func(format string, args ...any) error {
		return fmt.Errorf("mask %s: the constant is not a valid %s: %s", m, t.name, fmt.Sprintf(format, args...))
	}
	switch t.fam {
	case famText, famBpchar:
		if t.fam == famBpchar {
			v = strings.TrimRight(v, " ")
		}
		return fitText(v, t), nil
	case famInt:
		i, err := strconv.ParseInt(strings.TrimSpace(v), 10, t.bits)
		if err != nil {
			lo, hi := intBounds(t.bits)
			return "", bad("want an integer from %s to %s", lo, hi)
		}
		return strconv.FormatInt(i, 10), nil
	case famNumeric:
		s := strings.TrimSpace(v)
		switch strings.ToLower(s) {
		case "nan":
			return "NaN", nil
		case "infinity", "+infinity", "inf", "+inf", "-infinity", "-inf":
			if t.constrained {
				return "", bad("a %s cannot hold infinity", t.name)
			}
			if s[0] == '-' {
				return "-Infinity", nil
			}
			return "Infinity", nil
		}
		d, dscale, ok := parseDecimal(s)
		if !ok {
			return "", bad("want a decimal number")
		}
		if !t.constrained {
			return d.text(dscale), nil
		}
		d = d.round(t.scale)
		if !d.absBelowPow10(t.precision - t.scale) {
			return "", bad("out of range")
		}
		return d.text(max(t.scale, 0)), nil
	case famFloat:
		s := strings.TrimSpace(v)
		switch strings.ToLower(strings.TrimPrefix(s, "+")) {
		case "nan", "infinity", "inf", "-infinity", "-inf":
		default:
			if !floatSyntax.MatchString(s) {
				return "", bad("want a decimal number, NaN or Infinity")
			}
		}
		f, err := strconv.ParseFloat(s, t.bits)
		if err != nil {
			return "", bad("out of range")
		}
		if d, _, ok := parseDecimal(s); ok && f == 0 && d.coef.Sign() != 0 {
			return "", bad("out of range (underflow)")
		}
		return floatText(f, t.bits), nil
	case famBool:
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "t", "true", "y", "yes", "on", "1":
			return "t", nil
		case "f", "false", "n", "no", "off", "0":
			return "f", nil
		}
		return "", bad("want true or false")
	case famUUID:
		g := uuidSyntax.FindStringSubmatch(strings.TrimSpace(v))
		if g == nil {
			return "", bad("want xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx")
		}
		return strings.ToLower(strings.Join(g[1:], "-")), nil
	case famDate, famTimestamp, famTimestamptz:
		st, err := parseStamp(strings.TrimSpace(v), t.fam)
		if err != nil {
			switch t.fam {
			case famDate:
				return "", bad("want YYYY-MM-DD[ BC], infinity, -infinity or epoch")
			case famTimestamp:
				return "", bad("want YYYY-MM-DD[ HH:MM:SS[.ffffff]][ BC], infinity, -infinity or epoch")
			}
			return "", bad("want YYYY-MM-DD[ HH:MM:SS[.ffffff][±HH[:MM]]][ BC], infinity, -infinity or epoch")
		}
		if !stampInRange(st, t.fam) {
			return "", bad("out of range")
		}
		if st.frac > t.frac {
			return "", bad("more fractional digits than the type keeps")
		}
		return st.text(t.fam), nil
	}
	return v, nil
}
