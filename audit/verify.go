package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ErrBroken is wrapped by every BreakError: the log was altered.
var ErrBroken = errors.New("audit: chain broken")

// BreakError reports the first broken line of a log.
type BreakError struct {
	// File is the file holding the broken line.
	File string
	// Line is the 1-based line number in File; 0 when the error concerns
	// the file as a whole.
	Line int
	// Reason says what is wrong, e.g. "line 17 edited (prev hash of line
	// 18 does not match)".
	Reason string
}

// Error returns "FILE:LINE: reason".
func (e *BreakError) Error() string {
	if e.Line == 0 {
		return e.File + ": " + e.Reason
	}
	return e.File + ":" + strconv.Itoa(e.Line) + ": " + e.Reason
}

// Unwrap returns ErrBroken.
func (e *BreakError) Unwrap() error { return ErrBroken }

// Anchor is a chain position recorded outside the log (Writer.Head):
// the sequence number of a line and the hex SHA-256 of its bytes.
type Anchor struct {
	Seq  uint64
	Hash string
}

// String returns "SEQ:HASH", the form ParseAnchor reads.
func (a Anchor) String() string { return strconv.FormatUint(a.Seq, 10) + ":" + a.Hash }

// ParseAnchor parses "SEQ:HASH".
func ParseAnchor(s string) (Anchor, error) {
	seqText, hash, ok := strings.Cut(s, ":")
	seq, err := strconv.ParseUint(seqText, 10, 64)
	if !ok || err != nil || seq == 0 {
		return Anchor{}, fmt.Errorf("audit: anchor %q: want SEQ:HASH with SEQ > 0", s)
	}
	if len(hash) != hashHexLen {
		return Anchor{}, fmt.Errorf("audit: anchor %q: hash must be %d hex digits", s, hashHexLen)
	}
	if _, err := hex.DecodeString(hash); err != nil {
		return Anchor{}, fmt.Errorf("audit: anchor %q: hash is not hex", s)
	}
	return Anchor{Seq: seq, Hash: strings.ToLower(hash)}, nil
}

// VerifyOptions configures Verify.
type VerifyOptions struct {
	// Key is the HMAC key; nil skips the HMAC check (and then a line
	// edited with every later hash recomputed goes unnoticed).
	Key []byte
	// ExpectHead, when set, must be a line of the log with that hash:
	// this detects a truncated tail, which the chain alone cannot.
	ExpectHead *Anchor
}

// Marker is a gap or torn marker line found by Verify.
type Marker struct {
	File      string
	Line      int
	Seq       uint64
	Time      time.Time
	Kind      Kind
	Lost      int64  // for KindGap
	Reason    string // for KindGap
	TornBytes int64  // for KindTorn
}

// Result summarises a verified log.
type Result struct {
	// Files are the files walked, oldest first.
	Files []string
	// Records counts every line, statements and markers.
	Records int64
	// Statements counts statement lines.
	Statements int64
	// FirstSeq and LastSeq are the sequence numbers of the first and the
	// last line.
	FirstSeq, LastSeq uint64
	// FromGenesis says the first line is sequence 1 chained to Genesis;
	// false means earlier lines are not present (rotated away, or cut).
	FromGenesis bool
	// FirstTime and LastTime are the times of the first and last line.
	FirstTime, LastTime time.Time
	// Head is the last line's position, usable as an anchor.
	Head Anchor
	// HMACChecked says every line's HMAC was verified.
	HMACChecked bool
	// HMACPresent says lines carry an hmac (checked or not).
	HMACPresent bool
	// Markers are the gap and torn markers, in order.
	Markers []Marker
	// Lost sums the records the gap markers count.
	Lost int64
	// IncompleteTail is the length of an incomplete last line that was
	// ignored: a write in progress, or a crash the writer has not yet
	// sealed with a torn marker.
	IncompleteTail int
}

// reorderWindow is how many lines Verify reads ahead, after a sequence
// jump, looking for the missing record to tell "reordered" from
// "missing".
const reorderWindow = 100_000

// Files returns the log at path and its rotated predecessors path.N ...
// path.1, oldest first. A hole in the numbering is a BreakError.
func Files(path string) ([]string, error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("audit: list %s: %w", dir, err)
	}
	var nums []int
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), base+".")
		if !ok || rest == "" || strings.TrimLeft(rest, "0123456789") != "" || rest[0] == '0' {
			continue
		}
		n, err := strconv.Atoi(rest)
		if err != nil {
			continue
		}
		nums = append(nums, n)
	}
	slices.Sort(nums)
	for i, n := range nums {
		if n != i+1 {
			return nil, &BreakError{File: path + "." + strconv.Itoa(i+1),
				Reason: fmt.Sprintf("rotated file missing (%s.%d exists)", path, n)}
		}
	}
	files := make([]string, 0, len(nums)+1)
	for i := len(nums); i >= 1; i-- {
		files = append(files, path+"."+strconv.Itoa(i))
	}
	if _, err := os.Stat(path); err == nil || len(nums) == 0 {
		files = append(files, path)
	}
	return files, nil
}

// rawLine is one line as read, without its newline.
type rawLine struct {
	file     string
	no       int
	data     []byte
	complete bool // it ended with a newline
}

// lineReader reads the lines of several files in order, with look-ahead.
type lineReader struct {
	paths  []string
	next   int // index of the next file to open
	f      *os.File
	r      *bufio.Reader
	file   string
	no     int
	queued []rawLine
}

func (lr *lineReader) close() {
	if lr.f != nil {
		lr.f.Close()
		lr.f = nil
	}
}

// read returns the next line, or io.EOF after the last file.
func (lr *lineReader) read() (rawLine, error) {
	if len(lr.queued) > 0 {
		l := lr.queued[0]
		lr.queued = lr.queued[1:]
		return l, nil
	}
	return lr.load()
}

// peek returns the line read would return next, without consuming it.
func (lr *lineReader) peek(i int) (rawLine, error) {
	for len(lr.queued) <= i {
		l, err := lr.load()
		if err != nil {
			return rawLine{}, err
		}
		lr.queued = append(lr.queued, l)
	}
	return lr.queued[i], nil
}

func (lr *lineReader) load() (rawLine, error) {
	for {
		if lr.f == nil {
			if lr.next == len(lr.paths) {
				return rawLine{}, io.EOF
			}
			f, err := os.Open(lr.paths[lr.next])
			if err != nil {
				return rawLine{}, fmt.Errorf("audit: %w", err)
			}
			lr.f, lr.r, lr.file, lr.no = f, bufio.NewReaderSize(f, 256<<10), lr.paths[lr.next], 0
			lr.next++
		}
		var data []byte
		for {
			chunk, err := lr.r.ReadSlice('\n')
			data = append(data, chunk...)
			if len(data) > MaxLineSize {
				return rawLine{}, &BreakError{File: lr.file, Line: lr.no + 1,
					Reason: fmt.Sprintf("line %d is longer than %d bytes", lr.no+1, MaxLineSize)}
			}
			if err == nil {
				lr.no++
				return rawLine{file: lr.file, no: lr.no, data: data[:len(data)-1], complete: true}, nil
			}
			if errors.Is(err, bufio.ErrBufferFull) {
				continue
			}
			if !errors.Is(err, io.EOF) {
				return rawLine{}, fmt.Errorf("audit: read %s: %w", lr.file, err)
			}
			lr.close()
			if len(data) > 0 {
				lr.no++
				return rawLine{file: lr.file, no: lr.no, data: data}, nil
			}
			break
		}
	}
}

// entry is a verified line, as the next line's checks need it.
type entry struct {
	file string
	no   int
	seq  uint64
	hash string
}

// chainFields are the members of a line that Verify reads; decoding only
// these is several times faster than decoding a whole Line.
type chainFields struct {
	Seq       uint64    `json:"seq"`
	Time      time.Time `json:"time"`
	Kind      Kind      `json:"kind"`
	Lost      int64     `json:"lost"`
	Reason    string    `json:"reason"`
	TornBytes int64     `json:"torn_bytes"`
	Prev      string    `json:"prev"`
}

// parsed is a line decoded for verification.
type parsed struct {
	raw  rawLine
	line chainFields
	hash string
	err  error
}

func parse(raw rawLine) parsed {
	p := parsed{raw: raw}
	sum := sha256.Sum256(raw.data)
	p.hash = hex.EncodeToString(sum[:])
	if err := json.Unmarshal(raw.data, &p.line); err != nil {
		p.err = err
	} else if p.line.Seq == 0 {
		p.err = errors.New("no sequence number")
	} else if len(p.line.Prev) != hashHexLen {
		p.err = errors.New("no prev hash")
	}
	return p
}

// Verify walks the files (oldest first) and checks that every line is a
// record whose sequence number is one more than the line before, whose
// prev is the SHA-256 of the line before (Genesis for sequence 1), and,
// with a key, whose hmac is right. The first broken line is returned as
// a *BreakError (wrapping ErrBroken) with the Result so far; other errors
// are I/O errors.
func Verify(ctx context.Context, paths []string, opts VerifyOptions) (Result, error) {
	res := Result{Files: paths, HMACChecked: opts.Key != nil}
	lr := &lineReader{paths: paths}
	defer lr.close()
	var mac *chain
	if opts.Key != nil {
		mac = newChain(opts.Key)
	}
	var prev, prev2 *entry
	anchorSeen := false
	brk := func(file string, no int, format string, args ...any) (Result, error) {
		return res, &BreakError{File: file, Line: no, Reason: fmt.Sprintf(format, args...)}
	}
	for n := 0; ; n++ {
		if n%4096 == 0 && ctx.Err() != nil {
			return res, fmt.Errorf("audit: verify: %w", ctx.Err())
		}
		raw, err := lr.read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return res, err
		}
		if !raw.complete {
			if _, err := lr.peek(0); errors.Is(err, io.EOF) {
				res.IncompleteTail = len(raw.data)
				break
			}
			return brk(raw.file, raw.no, "line %d is incomplete (no newline) but lines follow it", raw.no)
		}
		cur := parse(raw)
		if cur.err != nil {
			return brk(raw.file, raw.no, "line %d is not an audit record: %v", raw.no, cur.err)
		}
		l := &cur.line
		if prev == nil {
			res.FirstSeq, res.FirstTime = l.Seq, l.Time
			if l.Seq == 1 {
				if l.Prev != Genesis {
					return brk(raw.file, raw.no, "line %d edited (sequence 1 does not chain to genesis)", raw.no)
				}
				res.FromGenesis = true
			}
		} else if err := checkLink(lr, prev, prev2, &cur); err != nil {
			return res, err
		}
		if mac != nil {
			switch ok, present := mac.verify(raw.data); {
			case !present:
				return brk(raw.file, raw.no, "line %d has no hmac (the log was written without a key, or the line was forged)", raw.no)
			case !ok:
				return brk(raw.file, raw.no, "line %d HMAC mismatch (edited or forged)", raw.no)
			}
		}
		if bytes.Contains(raw.data, []byte(hmacField)) {
			res.HMACPresent = true
		}
		if a := opts.ExpectHead; a != nil && l.Seq == a.Seq {
			if cur.hash != a.Hash {
				return brk(raw.file, raw.no, "line %d does not match the expected head %s (edited)", raw.no, a)
			}
			anchorSeen = true
		}
		res.Records++
		res.LastSeq, res.LastTime = l.Seq, l.Time
		res.Head = Anchor{Seq: l.Seq, Hash: cur.hash}
		switch l.Kind {
		case KindStatement:
			res.Statements++
		case KindGap, KindTorn:
			res.Markers = append(res.Markers, Marker{File: raw.file, Line: raw.no, Seq: l.Seq, Time: l.Time,
				Kind: l.Kind, Lost: l.Lost, Reason: l.Reason, TornBytes: l.TornBytes})
			res.Lost += l.Lost
		default:
			return brk(raw.file, raw.no, "line %d has unknown kind %q", raw.no, l.Kind)
		}
		prev2, prev = prev, &entry{file: raw.file, no: raw.no, seq: l.Seq, hash: cur.hash}
	}
	if a := opts.ExpectHead; a != nil && !anchorSeen {
		file, no := "", 0
		if len(paths) > 0 {
			file = paths[len(paths)-1]
		}
		if prev != nil {
			file, no = prev.file, prev.no
		}
		switch {
		case prev == nil || a.Seq > res.LastSeq:
			return brk(file, no, "log truncated: it ends at sequence %d, but the expected head is sequence %d", res.LastSeq, a.Seq)
		default:
			return brk(file, no, "the expected head, sequence %d, precedes the first line present (sequence %d): cannot be checked", a.Seq, res.FirstSeq)
		}
	}
	return res, nil
}

// verify reports whether data carries an hmac member and whether it is
// right: the HMAC-SHA-256 of the line with the member removed.
func (c *chain) verify(data []byte) (ok, present bool) {
	i := bytes.LastIndex(data, []byte(hmacField))
	if i < 0 {
		return false, false
	}
	rest := data[i+len(hmacField):]
	if len(rest) != hashHexLen+2 || rest[hashHexLen] != '"' || rest[hashHexLen+1] != '}' {
		return false, true
	}
	want := make([]byte, sha256.Size)
	if _, err := hex.Decode(want, rest[:hashHexLen]); err != nil {
		return false, true
	}
	c.mac.Reset()
	c.mac.Write(data[:i])
	c.mac.Write([]byte{'}'})
	return hmac.Equal(c.mac.Sum(nil), want), true
}

// checkLink checks cur against the line before it (prev, and prev2 before
// that) and names the first broken line. It may read ahead.
func checkLink(lr *lineReader, prev, prev2 *entry, cur *parsed) error {
	l := &cur.line
	raw := cur.raw
	brk := func(file string, no int, format string, args ...any) error {
		return &BreakError{File: file, Line: no, Reason: fmt.Sprintf(format, args...)}
	}
	want := prev.seq + 1
	switch {
	case l.Seq == want:
		if l.Prev == prev.hash {
			return nil
		}
		// Either the line before was edited, or this one was inserted:
		// then the next line follows on from the line before.
		if next, err := lr.peek(0); err == nil && next.complete {
			n := parse(next)
			if n.err == nil && n.line.Seq == l.Seq {
				return brk(raw.file, raw.no, "line %d inserted (its sequence %d repeats at %s)", raw.no, l.Seq, loc(raw, next))
			}
			if n.err == nil && n.line.Prev == prev.hash {
				return brk(raw.file, raw.no, "line %d inserted (%s chains to line %d)", raw.no, loc(raw, next), prev.no)
			}
		}
		if prev.file != raw.file {
			return brk(prev.file, prev.no, "line %d edited (prev hash of %s:%d does not match)", prev.no, raw.file, raw.no)
		}
		return brk(prev.file, prev.no, "line %d edited (prev hash of line %d does not match)", prev.no, raw.no)
	case l.Seq == prev.seq:
		if cur.hash == prev.hash {
			return brk(raw.file, raw.no, "line %d inserted (a copy of line %d)", raw.no, prev.no)
		}
		if prev2 != nil && l.Prev == prev2.hash && l.Prev != prev.hash {
			return brk(prev.file, prev.no, "line %d inserted (its sequence %d repeats at line %d, which chains to line %d)",
				prev.no, l.Seq, raw.no, prev2.no)
		}
		return brk(raw.file, raw.no, "line %d inserted (sequence %d repeats line %d)", raw.no, l.Seq, prev.no)
	case l.Seq < prev.seq:
		return brk(raw.file, raw.no, "line %d reordered (sequence goes back from %d to %d)", raw.no, prev.seq, l.Seq)
	}
	// The sequence jumps. Look ahead for the record that should be here:
	// found, this line is out of place (reordered, or inserted); not
	// found, records are missing (or this line's sequence was edited).
	var first parsed
	for i := 0; i < reorderWindow; i++ {
		next, err := lr.peek(i)
		if err != nil || !next.complete {
			break
		}
		n := parse(next)
		if i == 0 {
			first = n
		}
		if n.err != nil || n.line.Seq != want {
			continue
		}
		// n is the record that belongs here.
		if l.Prev == n.hash {
			if i == 0 {
				return brk(raw.file, raw.no, "lines %d and %d reordered (sequence %d before %d)", raw.no, next.no, l.Seq, want)
			}
			return brk(raw.file, raw.no, "line %d reordered (sequence %d expected, found %d; record %d is at %s)",
				raw.no, want, l.Seq, want, loc(raw, next))
		}
		if after, err := lr.peek(i + 1); i == 0 && err == nil && after.complete {
			if a := parse(after); a.err == nil && a.line.Seq == want+1 {
				return brk(raw.file, raw.no, "line %d inserted (the sequence goes on from %d at %s)", raw.no, want, loc(raw, next))
			}
		}
		return brk(raw.file, raw.no, "line %d reordered (sequence %d expected, found %d; record %d is at %s)",
			raw.no, want, l.Seq, want, loc(raw, next))
	}
	if first.err == nil && first.raw.complete && first.line.Seq == want+1 {
		return brk(raw.file, raw.no, "line %d edited (sequence %d where %d expected)", raw.no, l.Seq, want)
	}
	if prev.file != raw.file {
		return brk(raw.file, raw.no, "records %d to %d missing between %s and %s (sequence jumps from %d to %d)",
			want, l.Seq-1, prev.file, raw.file, prev.seq, l.Seq)
	}
	if l.Seq-want == 1 {
		return brk(raw.file, raw.no, "line %d missing (sequence jumps from %d to %d)", raw.no, prev.seq, l.Seq)
	}
	return brk(raw.file, raw.no, "lines %d-%d missing (sequence jumps from %d to %d)",
		raw.no, uint64(raw.no)+l.Seq-want-1, prev.seq, l.Seq)
}

// loc names line other relative to line at: "line N" in the same file,
// "FILE:N" in another.
func loc(at, other rawLine) string {
	if at.file == other.file {
		return "line " + strconv.Itoa(other.no)
	}
	return other.file + ":" + strconv.Itoa(other.no)
}
