package rules

import (
	"math"
	"math/big"
	"strconv"
	"strings"
)

// decimal is a finite decimal number coef·10^exp, the Go counterpart of a
// finite PostgreSQL numeric. It is immutable: operations return new values.
type decimal struct {
	coef *big.Int
	exp  int
}

// maxNumericExponent bounds the exponent of numeric input, as
// PostgreSQL's set_var_from_str does (NUMERIC_MAX_PRECISION, 1000).
const maxNumericExponent = 1000

var bigTen = big.NewInt(10)

func pow10(n int) *big.Int {
	return new(big.Int).Exp(bigTen, big.NewInt(int64(n)), nil)
}

// parseDecimal parses numeric input syntax: an optional sign, digits with
// an optional decimal point, and an optional exponent. It returns the
// value and the display scale PostgreSQL gives it (digits after the point
// minus the exponent, at least 0).
func parseDecimal(s string) (decimal, int, bool) {
	i := 0
	neg := false
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		neg = s[i] == '-'
		i++
	}
	var digits strings.Builder
	frac, seenDigit, seenPoint := 0, false, false
scan:
	for ; i < len(s); i++ {
		switch c := s[i]; {
		case c >= '0' && c <= '9':
			digits.WriteByte(c)
			seenDigit = true
			if seenPoint {
				frac++
			}
		case c == '.' && !seenPoint:
			seenPoint = true
		default:
			break scan
		}
	}
	if !seenDigit {
		return decimal{}, 0, false
	}
	e := 0
	if i < len(s) {
		if s[i] != 'e' && s[i] != 'E' {
			return decimal{}, 0, false
		}
		n, err := strconv.Atoi(s[i+1:])
		if err != nil || n > maxNumericExponent || n < -maxNumericExponent {
			return decimal{}, 0, false
		}
		e = n
	}
	coef, _ := new(big.Int).SetString(digits.String(), 10)
	if neg {
		coef.Neg(coef)
	}
	return decimal{coef: coef, exp: e - frac}, max(frac-e, 0), true
}

// decimalFromInt returns n as a decimal.
func decimalFromInt(n int64) decimal {
	return decimal{coef: big.NewInt(n), exp: 0}
}

// decimalFromFloat returns f (finite) as PostgreSQL's float-to-numeric
// casts see it: printed with printf's %.*g to DBL_DIG (15) significant
// digits for double precision and FLT_DIG (6) for real (float8_numeric and
// float4_numeric in src/backend/utils/adt/numeric.c).
func decimalFromFloat(f float64, bits int) decimal {
	digits := 15
	if bits == 32 {
		digits = 6
	}
	d, _, ok := parseDecimal(strconv.FormatFloat(f, 'e', digits-1, 64))
	if !ok {
		panic("rules: unparsable float formatting")
	}
	return d
}

// round rounds d to n decimal places, half away from zero, like
// PostgreSQL's round(numeric, int). n may be negative.
func (d decimal) round(n int) decimal {
	return d.cut(n, true)
}

// trunc truncates d to n decimal places, toward zero, like trunc(numeric, int).
func (d decimal) trunc(n int) decimal {
	return d.cut(n, false)
}

func (d decimal) cut(n int, roundHalfUp bool) decimal {
	if d.exp >= -n {
		return d
	}
	p := pow10(-n - d.exp)
	q, r := new(big.Int).QuoRem(d.coef, p, new(big.Int))
	if roundHalfUp {
		r.Abs(r).Lsh(r, 1)
		if r.Cmp(p) >= 0 {
			q.Add(q, big.NewInt(int64(d.coef.Sign())))
		}
	}
	return decimal{coef: q, exp: -n}
}

// absBelowPow10 reports whether |d| < 10^k.
func (d decimal) absBelowPow10(k int) bool {
	a := new(big.Int).Abs(d.coef)
	if k >= d.exp {
		return a.Cmp(pow10(k-d.exp)) < 0
	}
	return a.Mul(a, pow10(d.exp-k)).Cmp(big.NewInt(1)) < 0
}

// inInt reports whether d is an integer within the range of a bits-wide
// signed integer.
func (d decimal) inInt(bits int) bool {
	if d.exp < 0 {
		return false
	}
	v := new(big.Int).Mul(d.coef, pow10(d.exp))
	lim := new(big.Int).Lsh(big.NewInt(1), uint(bits-1))
	return v.Cmp(lim) < 0 && v.Cmp(lim.Neg(lim)) >= 0
}

// text prints d as PostgreSQL's numeric_out does with display scale
// dscale: no exponent, exactly dscale digits after the point, and no
// negative zero. Like a cast to numeric(p,dscale), it first rounds d to
// dscale places.
func (d decimal) text(dscale int) string {
	d = d.round(dscale)
	v := new(big.Int).Mul(d.coef, pow10(d.exp+dscale))
	s := new(big.Int).Abs(v).String()
	if len(s) <= dscale {
		s = strings.Repeat("0", dscale-len(s)+1) + s
	}
	if dscale > 0 {
		s = s[:len(s)-dscale] + "." + s[len(s)-dscale:]
	}
	if v.Sign() < 0 {
		s = "-" + s
	}
	return s
}

// float converts d to the nearest bits-wide float like PostgreSQL's
// numeric-to-float casts (strtod on the printed numeric), except that a
// value beyond the type's largest finite value becomes that value (with
// d's sign) where PostgreSQL would report an overflow.
func (d decimal) float(bits int) float64 {
	// The text is always well-formed; the only error is ErrRange, with
	// ±Inf on overflow.
	f, _ := strconv.ParseFloat(d.coef.String()+"e"+strconv.Itoa(d.exp), bits)
	if math.IsInf(f, 0) {
		m := math.MaxFloat64
		if bits == 32 {
			m = math.MaxFloat32
		}
		return math.Copysign(m, f)
	}
	return f
}

// floatText prints f as PostgreSQL's float4out/float8out do with
// extra_float_digits > 0: the shortest digits that read back exactly (see
// shortestDigits), in fixed notation when the decimal exponent X satisfies
// -4 <= X < P and in exponential notation (at least two exponent digits)
// otherwise, where P is 15 (DBL_DIG) for double precision and 6 (FLT_DIG)
// for real, matching printf's %g thresholds (src/common/d2s.c, f2s.c).
func floatText(f float64, bits int) string {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	}
	sign := ""
	if math.Signbit(f) {
		sign, f = "-", -f
	}
	if f == 0 {
		return sign + "0"
	}
	digits, x := shortestDigits(f, bits)
	p := 15
	if bits == 32 {
		p = 6
	}
	if x >= -4 && x < p {
		point := x + 1 // digits before the decimal point
		switch {
		case point <= 0:
			return sign + "0." + strings.Repeat("0", -point) + digits
		case point >= len(digits):
			return sign + digits + strings.Repeat("0", point-len(digits))
		default:
			return sign + digits[:point] + "." + digits[point:]
		}
	}
	out := sign + digits[:1]
	if len(digits) > 1 {
		out += "." + digits[1:]
	}
	esign := "+"
	if x < 0 {
		esign, x = "-", -x
	}
	e := strconv.Itoa(x)
	if len(e) < 2 {
		e = "0" + e
	}
	return out + "e" + esign + e
}

// shortestDigits returns the significant digits (no trailing zeros) and
// the decimal exponent X (value = d.ddd × 10^X) of the shortest decimal
// that lies strictly between the midpoints from positive, finite f to its
// neighbouring bits-wide floats, choosing, among equally short ones, the
// one closest to f, and on a tie the one with an even last digit. This
// is PostgreSQL's Ryū variant, which, unlike strconv's shortest
// formatting, never picks a decimal exactly on a midpoint (a tie that
// strtod resolves to even): for 55999614383755696 it prints
// 5.5999614383755696e+16, not 5.59996143837557e+16.
func shortestDigits(f float64, bits int) (string, int) {
	exact := new(big.Rat).SetFloat64(f)
	var below, above float64
	if bits == 32 {
		below = float64(math.Nextafter32(float32(f), 0))
		above = float64(math.Nextafter32(float32(f), math.MaxFloat32))
	} else {
		below = math.Nextafter(f, 0)
		above = math.Nextafter(f, math.MaxFloat64)
	}
	half := big.NewRat(1, 2)
	lo := new(big.Rat).Mul(new(big.Rat).Add(exact, new(big.Rat).SetFloat64(below)), half)
	var hi *big.Rat
	if above == f { // the largest finite float: the gap above is the gap below
		hi = new(big.Rat).Sub(new(big.Rat).Add(exact, exact), lo)
	} else {
		hi = new(big.Rat).Mul(new(big.Rat).Add(exact, new(big.Rat).SetFloat64(above)), half)
	}
	for p := 1; ; p++ {
		// The correctly rounded p-digit decimal and its neighbours hold
		// every p-digit decimal of the interval closest to f.
		near, _, _ := parseDecimal(strconv.FormatFloat(f, 'e', p-1, 64))
		var best *decimal
		var bestDist *big.Rat
		for _, delta := range []int64{-1, 0, 1} {
			c := decimal{coef: new(big.Int).Add(near.coef, big.NewInt(delta)), exp: near.exp}
			r := c.rat()
			if r.Cmp(lo) <= 0 || r.Cmp(hi) >= 0 {
				continue
			}
			dist := new(big.Rat).Sub(r, exact)
			dist.Abs(dist)
			if best == nil || dist.Cmp(bestDist) < 0 || dist.Cmp(bestDist) == 0 && c.coef.Bit(0) == 0 {
				best, bestDist = &c, dist
			}
		}
		if best != nil {
			s := strings.TrimRight(best.coef.String(), "0")
			return s, best.exp + len(best.coef.String()) - 1
		}
	}
}

// rat returns d as an exact rational.
func (d decimal) rat() *big.Rat {
	r := new(big.Rat).SetInt(d.coef)
	if d.exp >= 0 {
		return r.Mul(r, new(big.Rat).SetInt(pow10(d.exp)))
	}
	return r.Quo(r, new(big.Rat).SetInt(pow10(-d.exp)))
}
