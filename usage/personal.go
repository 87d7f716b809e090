package usage

import (
	"context"
	"fmt"
	"math/big"
	"net/netip"
	"regexp"
	"strings"
	"unicode"

	"github.com/jackc/pgx/v5"
)

// Category is a kind of personal data the report recognises in
// unclassified columns.
type Category struct {
	// Name is the category, e.g. "phone".
	Name string
	// Classes are policy class names that fit it, best first; the first is
	// suggested when the policy has none of them.
	Classes []string
	// Mask is the mask suggested for a new class.
	Mask string
	// Describe says what the values look like, for evidence lines.
	Describe string
}

// categories are checked in this order, so that e.g. email_address is an
// email and ip_address an IP address, not a postal address.
var categories = []Category{
	{"email", []string{"email", "email_address"}, "email", "e-mail addresses"},
	{"ip_address", []string{"ip_address", "ip"}, "null", "IP addresses"},
	{"card", []string{"card", "pan", "credit_card"}, "partial(last=4)", "payment card numbers (Luhn-valid)"},
	{"iban", []string{"iban", "bank_account"}, "partial(last=4)", "IBANs (mod-97 valid)"},
	{"national_id", []string{"national_id", "ssn", "nin"}, "partial(last=4)", "national identification numbers"},
	{"phone", []string{"phone", "telephone"}, "partial(last=4)", "phone numbers"},
	{"birth_date", []string{"birth_date", "dob"}, "truncate(year)", "birth dates"},
	{"address", []string{"address", "postal_address"}, "null", "postal addresses"},
}

// nameRules map a category to name tokens (lower case, split at "_",
// "-", digits-to-letters and camelCase) and token pairs that suggest it.
var nameRules = map[string]struct {
	tokens []string
	pairs  [][2]string
	subs   []string // substrings of the whole name
}{
	"email":       {tokens: []string{"email", "mail", "emailaddress"}, subs: []string{"email"}},
	"ip_address":  {tokens: []string{"ip", "ipaddr", "ipaddress", "ipv4", "ipv6"}, pairs: [][2]string{{"remote", "addr"}, {"client", "addr"}}},
	"card":        {tokens: []string{"card", "pan", "ccnum", "creditcard", "cardnumber"}, pairs: [][2]string{{"cc", "number"}, {"cc", "num"}}},
	"iban":        {tokens: []string{"iban"}, pairs: [][2]string{{"bank", "account"}}},
	"national_id": {tokens: []string{"ssn", "nin", "nino", "passport", "bsn", "personnummer", "nationalid", "tin"}, pairs: [][2]string{{"national", "id"}, {"tax", "id"}, {"social", "security"}, {"id", "number"}}},
	"phone":       {tokens: []string{"phone", "mobile", "tel", "telephone", "msisdn", "fax", "cellphone"}, subs: []string{"phone"}},
	"birth_date":  {tokens: []string{"dob", "birthday", "birthdate", "birth", "born"}},
	"address":     {tokens: []string{"address", "addr", "street", "zip", "zipcode", "postcode", "postal", "housenumber"}},
}

// CategoryByName returns the category of personal data a column name
// suggests, or nil.
func CategoryByName(column string) *Category {
	tokens := nameTokens(column)
	has := func(t string) bool {
		for _, x := range tokens {
			if x == t {
				return true
			}
		}
		return false
	}
	lower := strings.ToLower(column)
	for i := range categories {
		c := &categories[i]
		r := nameRules[c.Name]
		for _, t := range r.tokens {
			if has(t) {
				return c
			}
		}
		for _, p := range r.pairs {
			if has(p[0]) && has(p[1]) {
				return c
			}
		}
		for _, s := range r.subs {
			if strings.Contains(lower, s) {
				return c
			}
		}
	}
	return nil
}

// nameTokens splits a column name into lower-case words at
// non-alphanumerics and camelCase boundaries; a word with trailing digits
// (address2) also counts without them.
func nameTokens(s string) []string {
	var out []string
	var cur []rune
	flush := func() {
		if len(cur) == 0 {
			return
		}
		w := strings.ToLower(string(cur))
		out = append(out, w)
		if t := strings.TrimRightFunc(w, unicode.IsDigit); t != w && t != "" {
			out = append(out, t)
		}
		cur = cur[:0]
	}
	rs := []rune(s)
	for i, r := range rs {
		switch {
		case !unicode.IsLetter(r) && !unicode.IsDigit(r):
			flush()
		case unicode.IsUpper(r) && i > 0 && unicode.IsLower(rs[i-1]):
			flush()
			cur = append(cur, r)
		default:
			cur = append(cur, r)
		}
	}
	flush()
	return out
}

func categoryNamed(name string) *Category {
	for i := range categories {
		if categories[i].Name == name {
			return &categories[i]
		}
	}
	return nil
}

var (
	emailRe = regexp.MustCompile(`^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$`)
	ssnRe   = regexp.MustCompile(`^(\d{3})-(\d{2})-(\d{4})$`)
	phoneRe = regexp.MustCompile(`^\+?\(?[0-9][0-9 ().-]{5,22}[0-9]$`)
	// notPhoneRe are digit groups that are dates or SSN-shaped, not phones.
	notPhoneRe = regexp.MustCompile(`^(\d{4}-\d{2}-\d{2}|\d{3}-\d{2}-\d{4}|\d{2}[./-]\d{2}[./-]\d{4})$`)
	ibanRe     = regexp.MustCompile(`^[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}$`)
)

// ValueCategory returns the name of the category one value looks like
// ("" for none). The checks are structural: Luhn for cards, mod-97 for
// IBANs, a parse for IP addresses.
func ValueCategory(v string) string {
	v = strings.TrimSpace(v)
	if v == "" {
		return ""
	}
	compact := strings.Map(func(r rune) rune {
		if r == ' ' || r == '-' {
			return -1
		}
		return r
	}, v)
	switch {
	case ibanRe.MatchString(strings.ToUpper(compact)) && ibanValid(strings.ToUpper(compact)):
		return "iban"
	case isDigits(compact) && len(compact) >= 13 && len(compact) <= 19 && luhnValid(compact):
		return "card"
	case ssnValid(v):
		return "national_id"
	case emailRe.MatchString(v):
		return "email"
	case isIP(v):
		return "ip_address"
	case phoneRe.MatchString(v) && !notPhoneRe.MatchString(v):
		n := 0
		for _, r := range v {
			if r >= '0' && r <= '9' {
				n++
			}
		}
		if n >= 7 && n <= 15 {
			return "phone"
		}
	}
	return ""
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// luhnValid checks the Luhn (mod 10) check digit of a card number.
func luhnValid(digits string) bool {
	sum := 0
	double := false
	for i := len(digits) - 1; i >= 0; i-- {
		d := int(digits[i] - '0')
		if double {
			d *= 2
			if d > 9 {
				d -= 9
			}
		}
		sum += d
		double = !double
	}
	return sum%10 == 0
}

// ibanValid checks an IBAN's ISO 13616 mod-97 check digits: move the
// first four characters to the end, replace letters by 10..35, and the
// number mod 97 must be 1.
func ibanValid(iban string) bool {
	var b strings.Builder
	for _, r := range iban[4:] + iban[:4] {
		switch {
		case r >= '0' && r <= '9':
			b.WriteRune(r)
		case r >= 'A' && r <= 'Z':
			fmt.Fprintf(&b, "%d", r-'A'+10)
		default:
			return false
		}
	}
	n, ok := new(big.Int).SetString(b.String(), 10)
	return ok && new(big.Int).Mod(n, big.NewInt(97)).Int64() == 1
}

// ssnValid checks the US SSN format and its unassigned ranges (area 000,
// 666 and 9xx, group 00, serial 0000 are never issued).
func ssnValid(v string) bool {
	m := ssnRe.FindStringSubmatch(v)
	if m == nil {
		return false
	}
	return m[1] != "000" && m[1] != "666" && m[1][0] != '9' && m[2] != "00" && m[3] != "0000"
}

// isIP accepts an address or, as PostgreSQL's inet prints, an address
// with a prefix length.
func isIP(v string) bool {
	if _, err := netip.ParseAddr(v); err == nil {
		return true
	}
	_, err := netip.ParsePrefix(v)
	return err == nil
}

// SampleResult is what sampling one column's values found. It never holds
// the values.
type SampleResult struct {
	// Sampled is the number of non-null values read.
	Sampled int `json:"sampled"`
	// Category is the category most values look like ("" if none reaches
	// the threshold), and Matched how many values fit it.
	Category string `json:"category,omitempty"`
	Matched  int    `json:"matched"`
	// Err is why the column could not be sampled ("" if it was).
	Err string `json:"error,omitempty"`
}

// Sampling thresholds: a column is said to hold a category when at least
// sampleMinValues non-null values were read and sampleShare of them fit.
const (
	SampleLimit     = 50
	sampleMinValues = 5
	sampleShare     = 0.8
	// sampleTimeout is the statement_timeout for one sampling query.
	sampleTimeout = "5s"
)

// ClassifyValues returns the category most of values look like and how
// many fit it, or "" when fewer than 80% (or fewer than 5 values) fit.
func ClassifyValues(values []string) (string, int) {
	counts := map[string]int{}
	for _, v := range values {
		if c := ValueCategory(v); c != "" {
			counts[c]++
		}
	}
	best, n := "", 0
	for c, k := range counts {
		if k > n || (k == n && c < best) {
			best, n = c, k
		}
	}
	if len(values) < sampleMinValues || float64(n) < sampleShare*float64(len(values)) {
		return "", n
	}
	return best, n
}

// SampleColumn reads up to limit non-null values of one column in a
// read-only transaction with a statement timeout, classifies them, and
// forgets them. Only the counts leave this function.
func SampleColumn(ctx context.Context, conn *pgx.Conn, schema, table, column string, limit int) SampleResult {
	var values []string
	err := pgx.BeginTxFunc(ctx, conn, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL statement_timeout = '"+sampleTimeout+"'"); err != nil {
			return err
		}
		q := fmt.Sprintf(`SELECT CAST(%s AS text) FROM %s.%s WHERE %s IS NOT NULL LIMIT %d`,
			pgIdent(column), pgIdent(schema), pgIdent(table), pgIdent(column), limit)
		rows, err := tx.Query(ctx, q)
		if err != nil {
			return err
		}
		values, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	if err != nil {
		return SampleResult{Err: err.Error()}
	}
	cat, n := ClassifyValues(values)
	clear(values)
	return SampleResult{Sampled: len(values), Category: cat, Matched: n}
}

func pgIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
