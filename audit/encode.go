package audit

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"strconv"
	"time"
	"unicode/utf8"
)

// timeLayout is RFC 3339 in UTC with exactly six fractional digits.
const timeLayout = "2006-01-02T15:04:05.000000Z"

// hmacField starts the last member of a keyed line. JSON escapes every '"'
// inside a string, so these bytes cannot occur inside a value.
const hmacField = `,"hmac":"`

// hashHexLen is the length of a hex SHA-256 or HMAC-SHA-256.
const hashHexLen = 2 * sha256.Size

// chain is the state that links lines: the sequence number and hash of the
// last line, and the HMAC over each new line when a key is set.
type chain struct {
	seq  uint64
	hash [hashHexLen]byte // hex SHA-256 of the last line, or Genesis
	mac  hash.Hash        // nil without a key
	sum  [sha256.Size]byte
}

func newChain(key []byte) *chain {
	c := &chain{}
	copy(c.hash[:], Genesis)
	if len(key) > 0 {
		c.mac = hmac.New(sha256.New, key)
	}
	return c
}

// appendStatement appends the line for r with sequence number c.seq+1,
// including the trailing newline, and advances the chain.
func (c *chain) appendStatement(dst []byte, r *Record) []byte {
	start := len(dst)
	dst = c.appendHead(dst, r.Time, KindStatement)
	dst = append(dst, `,"session":`...)
	dst = appendString(dst, r.Session)
	dst = append(dst, `,"user":`...)
	dst = appendString(dst, r.User)
	dst = append(dst, `,"roles":`...)
	dst = appendStrings(dst, r.Roles)
	dst = append(dst, `,"client":`...)
	dst = appendString(dst, r.Client)
	dst = append(dst, `,"database":`...)
	dst = appendString(dst, r.Database)
	dst = append(dst, `,"application":`...)
	dst = appendString(dst, r.Application)
	dst = append(dst, `,"fingerprint":`...)
	dst = appendString(dst, r.Fingerprint)
	dst = append(dst, `,"sql":`...)
	dst = appendString(dst, r.SQL)
	dst = append(dst, `,"columns":[`...)
	for i := range r.Columns {
		col := &r.Columns[i]
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"table":`...)
		dst = appendString(dst, col.Table)
		dst = append(dst, `,"column":`...)
		dst = appendString(dst, col.Column)
		dst = append(dst, `,"treatment":`...)
		dst = appendString(dst, string(col.Treatment))
		dst = append(dst, `,"clauses":`...)
		dst = appendStrings(dst, col.Clauses)
		dst = append(dst, '}')
	}
	dst = append(dst, `],"rows":`...)
	dst = strconv.AppendInt(dst, r.Rows, 10)
	dst = append(dst, `,"duration_us":`...)
	dst = strconv.AppendInt(dst, r.Duration.Microseconds(), 10)
	dst = append(dst, `,"outcome":`...)
	dst = appendString(dst, string(r.Outcome))
	if r.SQLState != "" {
		dst = append(dst, `,"sqlstate":`...)
		dst = appendString(dst, r.SQLState)
	}
	if r.Rule != "" {
		dst = append(dst, `,"rule":`...)
		dst = appendString(dst, r.Rule)
	}
	return c.appendTail(dst, start)
}

// appendGap appends a gap marker for lost records.
func (c *chain) appendGap(dst []byte, now time.Time, lost int64, reason string) []byte {
	start := len(dst)
	dst = c.appendHead(dst, now, KindGap)
	dst = append(dst, `,"lost":`...)
	dst = strconv.AppendInt(dst, lost, 10)
	dst = append(dst, `,"reason":`...)
	dst = appendString(dst, reason)
	return c.appendTail(dst, start)
}

// appendTorn appends a torn marker for n truncated bytes.
func (c *chain) appendTorn(dst []byte, now time.Time, n int64) []byte {
	start := len(dst)
	dst = c.appendHead(dst, now, KindTorn)
	dst = append(dst, `,"torn_bytes":`...)
	dst = strconv.AppendInt(dst, n, 10)
	return c.appendTail(dst, start)
}

func (c *chain) appendHead(dst []byte, t time.Time, kind Kind) []byte {
	dst = append(dst, `{"seq":`...)
	dst = strconv.AppendUint(dst, c.seq+1, 10)
	dst = append(dst, `,"time":"`...)
	dst = appendTime(dst, t)
	dst = append(dst, `","kind":"`...)
	dst = append(dst, kind...)
	return append(dst, '"')
}

// appendTail closes the line that starts at dst[start]: the prev member,
// the HMAC over the line as it is without the hmac member, the newline;
// then it makes the line the chain's last.
func (c *chain) appendTail(dst []byte, start int) []byte {
	dst = append(dst, `,"prev":"`...)
	dst = append(dst, c.hash[:]...)
	dst = append(dst, `"}`...)
	if c.mac != nil {
		c.mac.Reset()
		c.mac.Write(dst[start:])
		sum := c.mac.Sum(c.sum[:0])
		dst = dst[:len(dst)-1] // drop '}'
		dst = append(dst, hmacField...)
		dst = hex.AppendEncode(dst, sum)
		dst = append(dst, `"}`...)
	}
	c.seq++
	c.sum = sha256.Sum256(dst[start:])
	hex.Encode(c.hash[:], c.sum[:])
	return append(dst, '\n')
}

// appendTime appends t in timeLayout, formatted by hand: the layout
// engine of time.Format costs more than the rest of a line's header.
func appendTime(dst []byte, t time.Time) []byte {
	t = t.UTC()
	y, mo, d := t.Date()
	h, mi, s := t.Clock()
	if y < 0 || y > 9999 {
		return t.AppendFormat(dst, timeLayout)
	}
	us := t.Nanosecond() / 1000
	dst = appendDigits(dst, y, 4)
	dst = append(dst, '-')
	dst = appendDigits(dst, int(mo), 2)
	dst = append(dst, '-')
	dst = appendDigits(dst, d, 2)
	dst = append(dst, 'T')
	dst = appendDigits(dst, h, 2)
	dst = append(dst, ':')
	dst = appendDigits(dst, mi, 2)
	dst = append(dst, ':')
	dst = appendDigits(dst, s, 2)
	dst = append(dst, '.')
	dst = appendDigits(dst, us, 6)
	return append(dst, 'Z')
}

// appendDigits appends v as exactly n decimal digits.
func appendDigits(dst []byte, v, n int) []byte {
	var b [8]byte
	for i := n - 1; i >= 0; i-- {
		b[i] = byte('0' + v%10)
		v /= 10
	}
	return append(dst, b[:n]...)
}

func appendStrings(dst []byte, ss []string) []byte {
	dst = append(dst, '[')
	for i, s := range ss {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendString(dst, s)
	}
	return append(dst, ']')
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string: '"' and '\\' escaped, control
// characters as \n, \r, \t or \u00XX, U+2028 and U+2029 escaped, and
// invalid UTF-8 replaced by U+FFFD, as encoding/json does.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '"', '\\':
				dst = append(dst, '\\', b)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
