package audit

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding"
	"encoding/binary"
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
//
// A statement line starts with the members its session and its shape
// share with the session's other runs of the shape, so the chain keeps,
// per (session, shape), the SHA-256 state after the whole 64-byte blocks
// of that prefix (and the HMAC's inner state after them) and hashes only
// the rest of each line: a fifth of a masked line instead of all of it.
type chain struct {
	seq  uint64
	hash [hashHexLen]byte // hex SHA-256 of the last line, or Genesis
	mac  hash.Hash        // crypto/hmac over the key, for verify; nil without a key
	sum  [sha256.Size]byte

	// The writer's hashes, resumed from saved states: d is the line's
	// SHA-256; with a key, inner and outer are the HMAC's hashes and
	// ipad and opad their states after the key's padded block.
	d, inner, outer hash.Hash
	ipad, opad      []byte
	isum            [sha256.Size]byte
	// mids holds the prefix states per (session, shape), at most
	// maxMids; the chain's goroutine owns it.
	mids map[midKey]*midstate
	// timeSec and timePrefix cache the formatted time up to the
	// fractional digits ("2006-01-02T15:04:05.") of the second timeSec;
	// timeOK says they are set.
	timeSec    int64
	timePrefix [20]byte
	timeOK     bool
}

// maxMids bounds a chain's prefix states; past it they are dropped and
// built again as lines need them (about 200 bytes each).
const maxMids = 4096

// midKey names the constant prefix of a statement line.
type midKey struct {
	session *Session
	shape   *Shape
}

// midstate is the hash state after the first n bytes of a statement
// line's constant prefix, n a multiple of the SHA-256 block size. It is
// immutable once made.
type midstate struct {
	c     *chain // the chain that made it (its key)
	shape *Shape
	n     int
	sha   []byte // marshalled SHA-256 state after prefix[:n]
	mac   []byte // marshalled HMAC inner state after the key block and prefix[:n]; nil without a key
}

func newChain(key []byte) *chain {
	c := &chain{d: sha256.New(), mids: make(map[midKey]*midstate)}
	copy(c.hash[:], Genesis)
	if len(key) > 0 {
		c.mac = hmac.New(sha256.New, key)
		// HMAC as RFC 2104 defines it, with the padded key blocks' states
		// saved so that each line resumes from them (and from a prefix's
		// state) rather than hashing the key block again.
		k := key
		if len(k) > sha256.BlockSize {
			s := sha256.Sum256(k)
			k = s[:]
		}
		var ipad, opad [sha256.BlockSize]byte
		copy(ipad[:], k)
		copy(opad[:], k)
		for i := range ipad {
			ipad[i] ^= 0x36
			opad[i] ^= 0x5c
		}
		c.inner, c.outer = sha256.New(), sha256.New()
		c.inner.Write(ipad[:])
		c.outer.Write(opad[:])
		c.ipad, c.opad = marshalHash(c.inner), marshalHash(c.outer)
	}
	return c
}

// marshalHash returns h's state; SHA-256 always has one.
func marshalHash(h hash.Hash) []byte {
	b, err := h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		panic("audit: SHA-256 state: " + err.Error())
	}
	return b
}

// resumeHash sets h to a state from marshalHash.
func resumeHash(h hash.Hash, state []byte) {
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(state); err != nil {
		panic("audit: SHA-256 state: " + err.Error())
	}
}

// midFor returns the prefix state for k, whose line prefix is prefix,
// making it if need be. The session remembers the last one it got, which
// saves the map lookup while a session runs one shape after another.
func (c *chain) midFor(k midKey, prefix []byte) *midstate {
	if m := k.session.mid.Load(); m != nil && m.c == c && m.shape == k.shape {
		return m
	}
	m := c.mids[k]
	if m == nil {
		m = c.makeMid(k, prefix)
		if m == nil {
			return nil
		}
	}
	k.session.mid.Store(m)
	return m
}

// makeMid makes and keeps the prefix state for k.
func (c *chain) makeMid(k midKey, prefix []byte) *midstate {
	n := len(prefix) - len(prefix)%sha256.BlockSize
	if n == 0 {
		return nil
	}
	m := &midstate{c: c, shape: k.shape, n: n}
	c.d.Reset()
	c.d.Write(prefix[:n])
	m.sha = marshalHash(c.d)
	if c.inner != nil {
		resumeHash(c.inner, c.ipad)
		c.inner.Write(prefix[:n])
		m.mac = marshalHash(c.inner)
	}
	if len(c.mids) >= maxMids {
		clear(c.mids)
	}
	c.mids[k] = m
	return m
}

// Session is the part of a statement line that every statement of one
// client session shares (session, user, roles, client, database,
// application), JSON-encoded once by NewSession. Its encoding is immutable and
// it may be shared, also between writers: the prefix hash state it
// remembers (mid) is set atomically and names the chain that made it.
type Session struct {
	enc   []byte // from `,"session":` to the end of the application member
	shard uint32 // the writer's queue shard for the session's statements: 0, or 1 + n % (shards-1)
	// mid is the prefix state the session's last statement line used
	// (see chain.midFor).
	mid atomic.Pointer[midstate]
}

// sessionShards hands out queue shards to sessions, round robin.
var sessionShards atomic.Uint32

// NewSession encodes the session members of statement lines. Roles nil is
// written as [].
func NewSession(id, user string, roles []string, client, database, application string) *Session {
	ss := newSession(id, user, roles, client, database, application)
	ss.shard = sessionShards.Add(1)%(1<<31) + 1
	return ss
}

// NewLoopSession is NewSession for a session whose statements are written
// by a thread that writes those of many sessions one after another (the
// proxy's io_uring loop): such sessions share one queue shard, which that
// thread and the writer go through as one dense stream in memory, where
// the shards that keep sessions on different threads apart would only
// scatter it. Like any session, it uses its shard for its whole life, so
// its statements stay in order.
func NewLoopSession(id, user string, roles []string, client, database, application string) *Session {
	return newSession(id, user, roles, client, database, application)
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
	enc  []byte // from `,"fingerprint":` to the end of the columns member
	once bool   // made for one record (Write): no prefix state is kept for it
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
	shape := NewShape(r.Fingerprint, r.SQL, r.Columns)
	shape.once = true
	return Statement{Time: r.Time,
		Session: newSession(r.Session, r.User, r.Roles, r.Client, r.Database, r.Application),
		Shape:   shape,
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
// shape members are copied from their encoded forms; they come first, so
// that the hash of every line of one session and shape can resume after
// them (see chain).
func (c *chain) appendStmt(dst []byte, st *Statement) []byte {
	start := len(dst)
	sess, shape := emptySession, emptyShape
	if st.Session != nil {
		sess = st.Session
	}
	if st.Shape != nil {
		shape = st.Shape
	}
	dst = append(dst, `{"kind":"statement"`...)
	dst = append(dst, sess.enc...)
	dst = append(dst, shape.enc...)
	var mid *midstate
	if !shape.once {
		mid = c.midFor(midKey{sess, shape}, dst[start:])
	}
	dst = append(dst, `,"seq":`...)
	dst = strconv.AppendUint(dst, c.seq+1, 10)
	dst = append(dst, `,"time":"`...)
	dst = c.appendTime(dst, st.Time)
	dst = append(dst, `","rows":`...)
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
	return c.appendTail(dst, start, mid)
}

// appendGap appends a gap marker for lost records.
func (c *chain) appendGap(dst []byte, now time.Time, lost int64, reason string) []byte {
	start := len(dst)
	dst = c.appendHead(dst, now, KindGap)
	dst = append(dst, `,"lost":`...)
	dst = strconv.AppendInt(dst, lost, 10)
	dst = append(dst, `,"reason":`...)
	dst = appendString(dst, reason)
	return c.appendTail(dst, start, nil)
}

// appendTorn appends a torn marker for n truncated bytes.
func (c *chain) appendTorn(dst []byte, now time.Time, n int64) []byte {
	start := len(dst)
	dst = c.appendHead(dst, now, KindTorn)
	dst = append(dst, `,"torn_bytes":`...)
	dst = strconv.AppendInt(dst, n, 10)
	return c.appendTail(dst, start, nil)
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
// then it makes the line the chain's last. mid, if not nil, is the hash
// state after the line's first mid.n bytes.
func (c *chain) appendTail(dst []byte, start int, mid *midstate) []byte {
	dst = append(dst, `,"prev":"`...)
	dst = append(dst, c.hash[:]...)
	dst = append(dst, `"}`...)
	if c.inner != nil {
		if mid != nil {
			resumeHash(c.inner, mid.mac)
			c.inner.Write(dst[start+mid.n:])
		} else {
			resumeHash(c.inner, c.ipad)
			c.inner.Write(dst[start:])
		}
		isum := c.inner.Sum(c.isum[:0])
		resumeHash(c.outer, c.opad)
		c.outer.Write(isum)
		c.outer.Sum(c.sum[:0])
		dst = dst[:len(dst)-1] // drop '}'
		dst = append(dst, hmacField...)
		var h [hashHexLen]byte
		encodeSum(&h, c.sum)
		dst = append(dst, h[:]...)
		dst = append(dst, `"}`...)
	}
	c.seq++
	if mid != nil {
		resumeHash(c.d, mid.sha)
		c.d.Write(dst[start+mid.n:])
	} else {
		c.d.Reset()
		c.d.Write(dst[start:])
	}
	c.d.Sum(c.sum[:0])
	encodeSum(&c.hash, c.sum)
	return append(dst, '\n')
}

// hexPairs holds the two lowercase hex digits of each byte value, first
// digit in the low byte.
var hexPairs = func() (t [256]uint16) {
	const digits = "0123456789abcdef"
	for i := range t {
		t[i] = uint16(digits[i>>4]) | uint16(digits[i&15])<<8
	}
	return t
}()

// encodeSum writes sum in lowercase hex to dst, as hex.Encode does, eight
// digits per store: a line's hash (and HMAC) is encoded on every line,
// and this is a fifth of hex.Encode's time.
func encodeSum(dst *[hashHexLen]byte, sum [sha256.Size]byte) {
	for i := 0; i < sha256.Size; i += 4 {
		v := uint64(hexPairs[sum[i]]) | uint64(hexPairs[sum[i+1]])<<16 | uint64(hexPairs[sum[i+2]])<<32 | uint64(hexPairs[sum[i+3]])<<48
		binary.LittleEndian.PutUint64(dst[2*i:], v)
	}
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
