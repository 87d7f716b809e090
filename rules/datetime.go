package rules

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// stamp is a date, timestamp or timestamptz value: ±infinity, or a point
// on the proleptic Gregorian calendar held as a UTC time.Time, whose
// astronomical year 0 is PostgreSQL's 1 BC.
type stamp struct {
	inf int // +1 for infinity, -1 for -infinity, 0 for a finite value
	t   time.Time
	// frac is the number of fractional-second digits written, for
	// checking constants against a timestamp(p).
	frac int
}

var errStampSyntax = errors.New("invalid date/time text")

// parseStamp parses the text of a date (fam famDate), timestamp or
// timestamptz as PostgreSQL prints it with DateStyle ISO:
//
//	YYYY-MM-DD[ HH:MM:SS[.ffffff]][±HH[:MM[:SS]]][ BC]
//
// with a year of four or more digits, plus "infinity", "-infinity" and
// "epoch". The time is optional (midnight) and the zone offset applies to
// timestamptz only, where it is optional (UTC); the value is converted to
// UTC.
func parseStamp(s string, fam family) (stamp, error) {
	switch strings.ToLower(s) {
	case "infinity", "+infinity":
		return stamp{inf: 1}, nil
	case "-infinity":
		return stamp{inf: -1}, nil
	case "epoch":
		return stamp{t: time.Unix(0, 0).UTC()}, nil
	}
	p := &stampScanner{s: s}
	bc := false
	if rest, ok := strings.CutSuffix(p.s, " BC"); ok {
		p.s, bc = rest, true
	}
	year := p.digits(4, 7)
	p.expect('-')
	month := p.digits(2, 2)
	p.expect('-')
	day := p.digits(2, 2)
	var hour, minute, sec, nsec, offset int
	frac := 0
	if fam != famDate && p.peek(' ') {
		p.expect(' ')
		hour = p.digits(2, 2)
		p.expect(':')
		minute = p.digits(2, 2)
		p.expect(':')
		sec = p.digits(2, 2)
		if p.peek('.') {
			p.expect('.')
			start := p.i
			p.digits(1, 6)
			frac = p.i - start
			if p.err == nil {
				f := p.s[start:p.i] + strings.Repeat("0", 9-frac)
				nsec, _ = strconv.Atoi(f)
			}
		}
		if fam == famTimestamptz && (p.peek('+') || p.peek('-')) {
			sign := 1
			if p.s[p.i] == '-' {
				sign = -1
			}
			p.i++
			offset = p.digits(2, 2) * 3600
			if p.peek(':') {
				p.expect(':')
				offset += p.digits(2, 2) * 60
				if p.peek(':') {
					p.expect(':')
					offset += p.digits(2, 2)
				}
			}
			offset *= sign
		}
	}
	if p.err != nil || p.i != len(p.s) {
		return stamp{}, errStampSyntax
	}
	if year == 0 || month < 1 || month > 12 || day < 1 || hour > 23 || minute > 59 || sec > 59 {
		return stamp{}, errStampSyntax
	}
	if bc {
		year = 1 - year
	}
	t := time.Date(year, time.Month(month), day, hour, minute, sec, nsec, time.FixedZone("", offset))
	if t.Day() != day { // e.g. February 30th
		return stamp{}, errStampSyntax
	}
	return stamp{t: t.UTC(), frac: frac}, nil
}

// stampScanner reads the fixed-width fields of a date/time text.
type stampScanner struct {
	s   string
	i   int
	err error
}

// digits reads between lo and hi decimal digits.
func (p *stampScanner) digits(lo, hi int) int {
	start := p.i
	for p.i < len(p.s) && p.i-start < hi && p.s[p.i] >= '0' && p.s[p.i] <= '9' {
		p.i++
	}
	if p.i-start < lo {
		p.err = errStampSyntax
		return 0
	}
	n, _ := strconv.Atoi(p.s[start:p.i])
	return n
}

func (p *stampScanner) peek(c byte) bool { return p.i < len(p.s) && p.s[p.i] == c }

func (p *stampScanner) expect(c byte) {
	if !p.peek(c) {
		p.err = errStampSyntax
		return
	}
	p.i++
}

// truncate returns st truncated to the start of its year, month or day,
// like date_trunc on a timestamp (on a timestamptz, in UTC). Infinity
// stays infinity.
func (st stamp) truncate(unit string) stamp {
	if st.inf != 0 {
		return st
	}
	y, m, d := st.t.Date()
	switch unit {
	case "year":
		m, d = time.January, 1
	case "month":
		d = 1
	}
	return stamp{t: time.Date(y, m, d, 0, 0, 0, 0, time.UTC)}
}

// text prints st as PostgreSQL does for fam with DateStyle ISO and
// TimeZone UTC: trailing zeros of the fraction dropped, "+00" after a
// timestamptz, " BC" last.
func (st stamp) text(fam family) string {
	switch st.inf {
	case 1:
		return "infinity"
	case -1:
		return "-infinity"
	}
	y, m, d := st.t.Date()
	bc := y <= 0
	if bc {
		y = 1 - y
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%04d-%02d-%02d", y, int(m), d)
	if fam != famDate {
		fmt.Fprintf(&b, " %02d:%02d:%02d", st.t.Hour(), st.t.Minute(), st.t.Second())
		if us := st.t.Nanosecond() / 1000; us != 0 {
			b.WriteString(strings.TrimRight(fmt.Sprintf(".%06d", us), "0"))
		}
		if fam == famTimestamptz {
			b.WriteString("+00")
		}
	}
	if bc {
		b.WriteString(" BC")
	}
	return b.String()
}

// stampInRange reports whether a constant lies safely inside the range
// PostgreSQL stores for fam: after 4712 BC, and before 294276 AD for
// timestamps or 5874897 AD for dates. The edge years themselves are
// refused to avoid reproducing PostgreSQL's exact bounds.
func stampInRange(st stamp, fam family) bool {
	if st.inf != 0 {
		return true
	}
	y := st.t.Year()
	hi := 294275
	if fam == famDate {
		hi = 5874896
	}
	return y >= -4711 && y <= hi
}
