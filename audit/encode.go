package audit

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"strconv"
	"sync/atomic"
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
	// timeSec and timePrefix cache the formatted time up to the
	// fractional digits ("2006-01-02T15:04:05.") of the second timeSec;
	// timeOK says they are set.
	timeSec    int64
	timePrefix [20]byte
	timeOK     bool
}

func newChain(key []byte) *chain {
	c := &chain{}
	copy(c.hash[:], Genesis)
	if len(key) > 0 {
		c.mac = hmac.New(sha256.New, key)
	}
	return c
}

// Session is the part of a statement line that every statement of one
// client session shares (session, user, roles, client, database,
// application), JSON-encoded once by NewSession. It is immutable and may
// be shared.
type Session struct {
	enc   []byte // from `,"session":` to the end of the application member
	shard uint32 // the writer's queue shard for the session's statements
}

// sessionShards hands out queue shards to sessions, round robin.
var sessionShards atomic.Uint32

// NewSession encodes the session members of statement lines. Roles nil is
// written as [].
func NewSession(id, user string, roles []string, client, database, application string) *Session {
	ss := newSession(id, user, roles, client, database, application)
	ss.shard = sessionShards.Add(1)
	return ss
}

// newSession is NewSession in queue shard 0.
func newSession(id, user string, roles []string, client, database, application string) *Session {
	b := make([]byte, 0, 96+len(id)+len(user)+len(client)+len(database)+len(application)+16*len(roles))
	b = append(b, `,"session":`...)
	b = appendString(b, id)
	b = append(b, `,"user":`...)
	b = appendString(b, user)
	b = append(b, `,"roles":`...)
	b = appendStrings(b, roles)
	b = append(b, `,"client":`...)
	b = appendString(b, client)
	b = append(b, `,"database":`...)
	b = appendString(b, database)
	b = append(b, `,"application":`...)
	b = appendString(b, application)
	return &Session{enc: b}
}

// Shape is the part of a statement line that every run of one statement
// shape shares (fingerprint, normalised SQL, columns), JSON-encoded once
// by NewShape. It is immutable and may be shared.
type Shape struct {
	enc []byte // from `,"fingerprint":` to the end of the columns member
}

// NewShape encodes the shape members of statement lines. sql must be
// normalised (no literals); a column's Clauses nil is written as [].
func NewShape(fingerprint, sql string, cols []Column) *Shape {
	b := make([]byte, 0, 48+len(fingerprint)+len(sql)+96*len(cols))
	b = append(b, `,"fingerprint":`...)
	b = appendString(b, fingerprint)
	b = append(b, `,"sql":`...)
	b = appendString(b, sql)
	b = append(b, `,"columns":[`...)
	for i := range cols {
		col := &cols[i]
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"table":`...)
		b = appendString(b, col.Table)
		b = append(b, `,"column":`...)
		b = appendString(b, col.Column)
		b = append(b, `,"treatment":`...)
		b = appendString(b, string(col.Treatment))
		b = append(b, `,"clauses":`...)
		b = appendStrings(b, col.Clauses)
		b = append(b, '}')
	}
	b = append(b, ']')
	return &Shape{enc: b}
}

// The forms of a nil Session and a nil Shape.
var (
	emptySession = newSession("", "", nil, "", "", "")
	emptyShape   = NewShape("", "", nil)
)

// statementOf converts r to the writer's form. Its session is in queue
// shard 0, so that records given to Write keep their order.
func statementOf(r *Record) Statement {
	return Statement{Time: r.Time,
		Session: newSession(r.Session, r.User, r.Roles, r.Client, r.Database, r.Application),
		Shape:   NewShape(r.Fingerprint, r.SQL, r.Columns),
		Rows:    r.Rows, Duration: r.Duration, Outcome: r.Outcome, SQLState: r.SQLState, Rule: r.Rule}
}

// appendStatement appends the line for r with sequence number c.seq+1,
// including the trailing newline, and advances the chain.
func (c *chain) appendStatement(dst []byte, r *Record) []byte {
	st := statementOf(r)
	return c.appendStmt(dst, &st)
}

// appendStmt appends the line for st with sequence number c.seq+1,
// including the trailing newline, and advances the chain. The session and
// shape members are copied from their encoded forms.
func (c *chain) appendStmt(dst []byte, st *Statement) []byte {
	start := len(dst)
	dst = c.appendHead(dst, st.Time, KindStatement)
	sess, shape := emptySession, emptyShape
	if st.Session != nil {
		sess = st.Session
	}
	if st.Shape != nil {
		shape = st.Shape
	}
	dst = append(dst, sess.enc...)
	dst = append(dst, shape.enc...)
	dst = append(dst, `,"rows":`...)
	dst = strconv.AppendInt(dst, st.Rows, 10)
	dst = append(dst, `,"duration_us":`...)
	dst = strconv.AppendInt(dst, st.Duration.Microseconds(), 10)
	dst = append(dst, `,"outcome":`...)
	switch st.Outcome {
	case OutcomeOK:
		dst = append(dst, `"ok"`...)
	default:
		dst = appendString(dst, string(st.Outcome))
	}
	if st.SQLState != "" {
		dst = append(dst, `,"sqlstate":`...)
		dst = appendString(dst, st.SQLState)
	}
	if st.Rule != "" {
		dst = append(dst, `,"rule":`...)
		dst = appendString(dst, st.Rule)
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
	dst = c.appendTime(dst, t)
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

// appendTime appends t in timeLayout like the function appendTime, reusing
// the formatted date and clock of the previous call within the same
// second.
func (c *chain) appendTime(dst []byte, t time.Time) []byte {
	sec := t.Unix()
	if c.timeOK && sec == c.timeSec {
		dst = append(dst, c.timePrefix[:]...)
		dst = appendDigits(dst, t.Nanosecond()/1000, 6)
		return append(dst, 'Z')
	}
	start := len(dst)
	dst = appendTime(dst, t)
	if len(dst)-start == len(timeLayout) {
		copy(c.timePrefix[:], dst[start:])
		c.timeSec, c.timeOK = sec, true
	}
	return dst
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
