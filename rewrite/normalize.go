package rewrite

// NormalizeSQL appends to dst the statement text with every literal
// replaced by "?" and whitespace and comments collapsed, so that texts that
// differ only in their constants share one analysis (usage facts) and one
// audit fingerprint. It reports false when it cannot scan the text with
// certainty (an unterminated string or comment, a byte it does not know):
// the caller then keys on the exact text.
//
// Literals are PostgreSQL's (documentation §4.1.2): '...' strings (two quotes
// stand for one; with standard_conforming_strings off, or after an E prefix, a
// backslash escapes the next byte), B'...', X'...', N'...', U&'...',
// dollar-quoted strings, and numeric constants. Quoted identifiers,
// parameters ($1) and everything else are kept. Numbers that may be
// positional references to output columns (right after ORDER BY, GROUP
// BY, DISTINCT ON ( or a comma in those lists) are kept, because they
// change which columns a statement uses.
func NormalizeSQL(dst []byte, sql string, standardStrings bool) ([]byte, bool) {
	return Normalize(dst, sql, standardStrings, nil)
}

// LiteralScan collects the literals Normalize replaced: plain '...'
// strings and unsigned decimal numbers in Lits (what a statement template
// can take, template.go); Other is set when some literal is of another
// kind (E'..', a dollar-quoted string, 0x1F, ...).
type LiteralScan struct {
	Lits  []Literal
	Other bool
}

// Normalize is NormalizeSQL that also records the literals in ls, if not
// nil. With ls, a literal is replaced by a NUL byte instead of "?": the
// text is then a template's shape, and "?" is also an operator character
// (jsonb's ?, ?| and ?&), so that "x ? '1'" and "x '1' ?" would share
// one shape although only the first parses. A NUL cannot occur in a
// statement text.
func Normalize(dst []byte, sql string, standardStrings bool, ls *LiteralScan) ([]byte, bool) {
	placeholder := "?"
	if ls != nil {
		placeholder = "\x00"
	}
	var (
		prev      string // the previous significant token, lower-cased for keywords
		space     bool   // whitespace or a comment since the last token
		depth     int    // parenthesis depth
		listDepth = -1   // depth of an ORDER BY / GROUP BY / DISTINCT ON list
		pendingOn bool   // DISTINCT ON seen, its "(" opens a list
	)
	emit := func(tok string) {
		if space && len(dst) > 0 {
			dst = append(dst, ' ')
		}
		space = false
		dst = append(dst, tok...)
	}
	emitLiteral := func(start, end int, plain bool) {
		emit(placeholder)
		prev = "?"
		if ls != nil {
			if plain {
				ls.Lits = append(ls.Lits, Literal{Start: start, End: end})
			} else {
				ls.Other = true
			}
		}
	}
	i := 0
	n := len(sql)
	for i < n {
		c := sql[i]
		switch {
		case byteClass[c]&classSpace != 0:
			space = true
			i++
			for i < n && byteClass[sql[i]]&classSpace != 0 {
				i++
			}
		case c == '-' && i+1 < n && sql[i+1] == '-':
			for i < n && sql[i] != '\n' {
				i++
			}
			space = true
		case c == '/' && i+1 < n && sql[i+1] == '*':
			// Block comments nest (§4.1.5).
			level := 0
			for i < n {
				if sql[i] == '/' && i+1 < n && sql[i+1] == '*' {
					level++
					i += 2
				} else if sql[i] == '*' && i+1 < n && sql[i+1] == '/' {
					level--
					i += 2
					if level == 0 {
						break
					}
				} else {
					i++
				}
			}
			if level != 0 {
				return dst, false
			}
			space = true
		case c == '\'':
			end, ok := scanString(sql, i, !standardStrings)
			if !ok {
				return dst, false
			}
			emitLiteral(i, end, standardStrings)
			i = end
		case c == '"':
			j := i + 1
			for {
				k := indexByteFrom(sql, j, '"')
				if k < 0 {
					return dst, false
				}
				if k+1 < n && sql[k+1] == '"' {
					j = k + 2
					continue
				}
				j = k + 1
				break
			}
			emit(sql[i:j])
			prev = "\""
			i = j
		case c == '$':
			if i+1 < n && sql[i+1] >= '0' && sql[i+1] <= '9' {
				j := i + 1
				for j < n && sql[j] >= '0' && sql[j] <= '9' {
					j++
				}
				emit(sql[i:j])
				prev = "$"
				i = j
				continue
			}
			// A dollar-quoted string: $tag$ ... $tag$.
			j := i + 1
			for j < n && isIdentChar(sql[j]) && sql[j] != '$' {
				j++
			}
			if j >= n || sql[j] != '$' || j > i+1 && sql[i+1] >= '0' && sql[i+1] <= '9' {
				return dst, false
			}
			tag := sql[i : j+1]
			end := indexFrom(sql, j+1, tag)
			if end < 0 {
				return dst, false
			}
			emitLiteral(i, end+len(tag), false)
			i = end + len(tag)
		case c >= '0' && c <= '9' || c == '.' && i+1 < n && sql[i+1] >= '0' && sql[i+1] <= '9':
			j := scanNumber(sql, i)
			if depth == listDepth && (prev == "by" || prev == "," || prev == "(") {
				emit(sql[i:j]) // a positional reference (ORDER BY 2)
				prev = "#"
			} else {
				// Only decimal forms are put back verbatim by statement
				// templates: PostgreSQL 15 reads 0x1F or 1_000 as a
				// number followed by an identifier.
				emitLiteral(i, j, decimalNumber(sql[i:j]))
			}
			i = j
		case byteClass[c]&classIdentStart != 0:
			j := i + 1
			for j < n && byteClass[sql[j]]&classIdentChar != 0 {
				j++
			}
			word := sql[i:j]
			// Prefixed strings: E'..', B'..', X'..', N'..', U&'..'.
			if j < n && sql[j] == '\'' && len(word) == 1 {
				switch word[0] | 0x20 {
				case 'e', 'b', 'x', 'n':
					end, ok := scanString(sql, j, word[0]|0x20 == 'e' || !standardStrings)
					if !ok {
						return dst, false
					}
					emitLiteral(i, end, false)
					i = end
					continue
				}
			}
			if len(word) == 1 && word[0]|0x20 == 'u' && j+1 < n && sql[j] == '&' && sql[j+1] == '\'' {
				end, ok := scanString(sql, j+1, !standardStrings)
				if !ok {
					return dst, false
				}
				emitLiteral(i, end, false)
				i = end
				continue
			}
			emit(word)
			kw := keyword(word)
			switch kw {
			case "by":
				if prev == "order" || prev == "group" {
					listDepth = depth
				}
			case "on":
				pendingOn = prev == "distinct"
			case "end-of-list":
				if depth == listDepth {
					listDepth = -1
				}
			}
			prev = kw
			i = j
		default:
			tok := sql[i : i+1]
			switch c {
			case '(':
				depth++
				if pendingOn {
					listDepth = depth
					pendingOn = false
				}
			case ')':
				if depth == listDepth {
					listDepth = -1
				}
				depth--
			case ';':
				listDepth, depth = -1, 0
			}
			if c < 0x20 || c >= 0x80 {
				return dst, false
			}
			emit(tok)
			prev = tok
			i++
		}
	}
	return dst, true
}

// scanString returns the index after the quoted string starting at the
// quote sql[i]; backslash says whether a backslash escapes the next byte.
func scanString(sql string, i int, backslash bool) (int, bool) {
	n := len(sql)
	j := i + 1
	for j < n {
		switch sql[j] {
		case '\\':
			if backslash {
				j += 2
				continue
			}
		case '\'':
			if j+1 < n && sql[j+1] == '\'' {
				j += 2
				continue
			}
			return j + 1, true
		}
		j++
	}
	return 0, false
}

// scanNumber returns the index after the numeric constant at sql[i]:
// digits with underscores, a fraction, an exponent, or a 0x/0o/0b prefix.
func scanNumber(sql string, i int) int {
	n := len(sql)
	j := i
	if sql[j] == '0' && j+1 < n && (sql[j+1]|0x20 == 'x' || sql[j+1]|0x20 == 'o' || sql[j+1]|0x20 == 'b') {
		j += 2
		for j < n && (isHexDigitByte(sql[j]) || sql[j] == '_') {
			j++
		}
		return j
	}
	for j < n && (sql[j] >= '0' && sql[j] <= '9' || sql[j] == '_') {
		j++
	}
	if j < n && sql[j] == '.' && !(j+1 < n && sql[j+1] == '.') {
		j++
		for j < n && (sql[j] >= '0' && sql[j] <= '9' || sql[j] == '_') {
			j++
		}
	}
	if j < n && sql[j]|0x20 == 'e' {
		k := j + 1
		if k < n && (sql[k] == '+' || sql[k] == '-') {
			k++
		}
		if k < n && sql[k] >= '0' && sql[k] <= '9' {
			for k < n && sql[k] >= '0' && sql[k] <= '9' {
				k++
			}
			j = k
		}
	}
	return j
}

// decimalNumber reports whether tok is a numeric constant in the decimal
// forms every PostgreSQL version reads alike (digits, a fraction, an
// exponent).
func decimalNumber(tok string) bool {
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		if !(c >= '0' && c <= '9' || c == '.' || c|0x20 == 'e' || c == '+' || c == '-') {
			return false
		}
	}
	return true
}

// Byte classes of the scanner, looked up in byteClass: one load per byte
// instead of a chain of comparisons.
const (
	classSpace      = 1 << iota // ' ', \t, \n, \r, \f, \v
	classIdentStart             // a-z, A-Z, _, and every byte >= 0x80
	classIdentChar              // classIdentStart, 0-9, $
)

var byteClass = func() (t [256]uint8) {
	for _, c := range []byte(" \t\n\r\f\v") {
		t[c] = classSpace
	}
	for c := range 256 {
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c >= 0x80 {
			t[c] = classIdentStart | classIdentChar
		}
		if c >= '0' && c <= '9' || c == '$' {
			t[c] = classIdentChar
		}
	}
	return t
}()

func isIdentChar(c byte) bool { return byteClass[c]&classIdentChar != 0 }

func isHexDigitByte(c byte) bool {
	return c >= '0' && c <= '9' || c|0x20 >= 'a' && c|0x20 <= 'f'
}

func indexByteFrom(s string, from int, c byte) int {
	for i := from; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
}

func indexFrom(s string, from int, sub string) int {
	for i := from; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return i
		}
	}
	return -1
}

// keyword classifies an identifier for the positional-reference rule:
// the few keywords it needs, "end-of-list" for those that end an ORDER
// BY or GROUP BY list, and "id" for anything else. It does not allocate.
func keyword(w string) string {
	if len(w) < 2 || len(w) > 9 {
		return "id"
	}
	// PostgreSQL folds keywords in ASCII only (a Kelvin sign is no 'k'),
	// and so does this: one switch on the first letter, then a
	// comparison with each candidate of the word's length.
	var k string
	switch w[0] | 0x20 {
	case 'b':
		k = "by"
	case 'd':
		k = "distinct"
	case 'e':
		k = "except"
	case 'f':
		switch len(w) {
		case 3:
			k = "for"
		case 4:
			k = "from"
		case 5:
			k = "fetch"
		}
	case 'g':
		k = "group"
	case 'h':
		k = "having"
	case 'i':
		k = "intersect"
	case 'l':
		k = "limit"
	case 'o':
		switch len(w) {
		case 2:
			k = "on"
		case 5:
			k = "order"
		case 6:
			k = "offset"
		}
	case 'r':
		k = "returning"
	case 's':
		k = "select"
	case 'u':
		k = "union"
	case 'w':
		switch len(w) {
		case 5:
			k = "where"
		case 6:
			k = "window"
		}
	}
	if len(k) != len(w) || !asciiEqualFold(w, k) {
		return "id"
	}
	switch k {
	case "by", "on", "order", "group", "distinct":
		return k
	}
	return "end-of-list"
}

// asciiEqualFold reports whether w equals the lower-case ASCII word k,
// ignoring the case of ASCII letters only.
func asciiEqualFold(w, k string) bool {
	for i := 0; i < len(k); i++ {
		c := w[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != k[i] {
			return false
		}
	}
	return true
}

// endOfList are the keywords that can follow an ORDER BY or GROUP BY list.
var endOfList = [...]string{"limit", "offset", "having", "window", "for", "union", "intersect", "except", "fetch", "returning", "where", "from", "select"}

// SameShape reports whether sql normalizes (Normalize, with the same
// standardStrings) to the same text as prev, given lits, the plain
// literals Normalize found in prev: sql must be prev with each of those
// literals replaced by a literal of the same kind (a decimal number by a
// decimal number, a '...' string by a '...' string) and nothing else
// changed. It scans only the replaced literals, so it costs a comparison
// of the texts where Normalize costs a scan of every token; false means
// only that the texts are not known to normalize alike.
//
// Why this is exact: Normalize reads the text left to right, and a plain
// literal leaves its state as any other literal of its kind would. Up to
// a literal the texts are the same bytes, and the literal is read by the
// scanner Normalize uses (scanNumber, scanString), so it ends where
// Normalize would end it. What Normalize decides by looking ahead past a
// token (a number's fraction or exponent, ".5", "$1", a prefixed string
// such as E'..', an identifier absorbing digits) could look into the
// replaced literal, so a literal counts only after a byte that starts no
// such token (see shapeBoundary); any other literal must be unchanged.
func SameShape(prev string, lits []Literal, sql string, standardStrings bool) bool {
	i, j := 0, 0
	for _, l := range lits {
		if l.Start < i || l.End > len(prev) || l.Start >= l.End {
			return false
		}
		k := j + (l.Start - i)
		if k > len(sql) || sql[j:k] != prev[i:l.Start] {
			return false
		}
		j = k
		if l.Start > 0 && !shapeBoundary[prev[l.Start-1]] || j >= len(sql) {
			return false
		}
		var end int
		switch c := sql[j]; {
		case prev[l.Start] == '\'':
			if c != '\'' || !standardStrings {
				return false
			}
			e, ok := scanString(sql, j, false)
			if !ok {
				return false
			}
			end = e
		case c >= '0' && c <= '9' || c == '.' && j+1 < len(sql) && sql[j+1] >= '0' && sql[j+1] <= '9':
			end = scanNumber(sql, j)
			if !decimalNumber(sql[j:end]) {
				return false
			}
		default:
			return false
		}
		i, j = l.End, end
	}
	return sql[j:] == prev[i:]
}

// shapeBoundary holds the bytes after which a literal can be replaced in
// SameShape: none of them starts a token whose end Normalize finds by
// looking at the byte after it.
var shapeBoundary = func() (t [256]bool) {
	for _, c := range []byte(" \t\n\r(,=<>[") {
		t[c] = true
	}
	return t
}()
