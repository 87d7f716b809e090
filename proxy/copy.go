package proxy

import (
	"bytes"
	"errors"

	"github.com/pgveil/pgveil/rewrite"
	"github.com/pgveil/pgveil/rules"
)

// copyCodec splits COPY data (text or CSV format, PostgreSQL
// documentation, COPY: "File Formats") into rows and fields, and writes
// rows back with some fields replaced. Rows may span CopyData messages;
// the codec keeps the incomplete rest.
type copyCodec struct {
	f       rewrite.CopyFormat
	pending []byte // bytes of an incomplete row
	header  bool   // the next row is the header
	ended   bool   // the end-of-data marker was seen
}

func newCopyCodec(f *rewrite.CopyFormat) *copyCodec {
	return &copyCodec{f: *f, header: f.Header}
}

// copyRow is one row: its raw bytes (newline included) and, for rows
// whose fields are transformed, the field boundaries.
type copyRow struct {
	raw    []byte
	fields [][]byte // raw field bytes (escaped/quoted), aliasing raw
	eol    []byte   // the line ending
	skip   bool     // header or end marker: passed through as is
}

// rows appends data and returns the complete rows; final flushes an
// incomplete last row.
func (c *copyCodec) rows(data []byte, final bool) ([]copyRow, error) {
	c.pending = append(c.pending, data...)
	var out []copyRow
	buf := c.pending
	for len(buf) > 0 {
		end, eolLen, ok := c.rowEnd(buf)
		if !ok {
			if !final {
				break
			}
			end, eolLen = len(buf), 0
		}
		raw := append([]byte(nil), buf[:end]...)
		buf = buf[end:]
		row := copyRow{raw: raw, eol: raw[len(raw)-eolLen:]}
		body := raw[:len(raw)-eolLen]
		switch {
		case c.ended:
			row.skip = true
		case c.header:
			row.skip, c.header = true, false
		case !c.f.CSV && string(body) == `\.`:
			row.skip, c.ended = true, true
		default:
			fields, err := c.split(body)
			if err != nil {
				return nil, err
			}
			row.fields = fields
		}
		out = append(out, row)
	}
	c.pending = append(c.pending[:0], buf...)
	return out, nil
}

// rowEnd finds the end of the first row of buf: its length with the line
// ending, and the ending's length.
func (c *copyCodec) rowEnd(buf []byte) (int, int, bool) {
	if !c.f.CSV {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			return 0, 0, false
		}
		if i > 0 && buf[i-1] == '\r' {
			return i + 1, 2, true
		}
		return i + 1, 1, true
	}
	inQuote := false
	for i := 0; i < len(buf); i++ {
		b := buf[i]
		switch {
		case inQuote && b == c.f.Escape && c.f.Escape != c.f.Quote && i+1 < len(buf) && (buf[i+1] == c.f.Quote || buf[i+1] == c.f.Escape):
			i++
		case b == c.f.Quote:
			if inQuote && c.f.Escape == c.f.Quote && i+1 < len(buf) && buf[i+1] == c.f.Quote {
				i++
				continue
			}
			if inQuote && c.f.Escape == c.f.Quote && i+1 == len(buf) {
				// A doubled quote may be split across messages.
				return 0, 0, false
			}
			inQuote = !inQuote
		case b == '\n' && !inQuote:
			if i > 0 && buf[i-1] == '\r' {
				return i + 1, 2, true
			}
			return i + 1, 1, true
		}
	}
	return 0, 0, false
}

// split returns the raw fields of a row body.
func (c *copyCodec) split(body []byte) ([][]byte, error) {
	var fields [][]byte
	if !c.f.CSV {
		start := 0
		for i := 0; i < len(body); i++ {
			switch body[i] {
			case '\\':
				i++
			case c.f.Delimiter:
				fields = append(fields, body[start:i])
				start = i + 1
			}
		}
		return append(fields, body[start:]), nil
	}
	start := 0
	inQuote := false
	for i := 0; i < len(body); i++ {
		b := body[i]
		switch {
		case inQuote && b == c.f.Escape && c.f.Escape != c.f.Quote && i+1 < len(body) && (body[i+1] == c.f.Quote || body[i+1] == c.f.Escape):
			i++
		case b == c.f.Quote:
			if inQuote && c.f.Escape == c.f.Quote && i+1 < len(body) && body[i+1] == c.f.Quote {
				i++
				continue
			}
			inQuote = !inQuote
		case b == c.f.Delimiter && !inQuote:
			fields = append(fields, body[start:i])
			start = i + 1
		}
	}
	if inQuote {
		return nil, errors.New("unterminated CSV quoted field")
	}
	return append(fields, body[start:]), nil
}

// value decodes a raw field: its value, or nil for NULL.
func (c *copyCodec) value(raw []byte) []byte {
	if !c.f.CSV {
		if string(raw) == c.f.Null {
			return nil
		}
		return unescapeText(raw)
	}
	if len(raw) > 0 && raw[0] == c.f.Quote {
		inner := raw[1:]
		if len(inner) > 0 && inner[len(inner)-1] == c.f.Quote {
			inner = inner[:len(inner)-1]
		}
		out := make([]byte, 0, len(inner))
		for i := 0; i < len(inner); i++ {
			if inner[i] == c.f.Escape && i+1 < len(inner) && (inner[i+1] == c.f.Quote || inner[i+1] == c.f.Escape) {
				i++
			}
			out = append(out, inner[i])
		}
		return out
	}
	if string(raw) == c.f.Null {
		return nil
	}
	return append([]byte{}, raw...)
}

// encode returns the raw field for value v (nil: NULL).
func (c *copyCodec) encode(v []byte) []byte {
	if v == nil {
		if c.f.CSV {
			return []byte(c.f.Null)
		}
		return []byte(c.f.Null)
	}
	if !c.f.CSV {
		out := make([]byte, 0, len(v)+2)
		for _, b := range v {
			switch b {
			case '\\':
				out = append(out, '\\', '\\')
			case '\n':
				out = append(out, '\\', 'n')
			case '\r':
				out = append(out, '\\', 'r')
			case '\t':
				out = append(out, '\\', 't')
			default:
				if b == c.f.Delimiter {
					out = append(out, '\\')
				}
				out = append(out, b)
			}
		}
		return out
	}
	needQuote := len(v) == 0 && c.f.Null == "" || string(v) == c.f.Null
	for _, b := range v {
		if b == c.f.Delimiter || b == c.f.Quote || b == c.f.Escape || b == '\n' || b == '\r' {
			needQuote = true
		}
	}
	if !needQuote {
		return append([]byte{}, v...)
	}
	out := make([]byte, 0, len(v)+4)
	out = append(out, c.f.Quote)
	for _, b := range v {
		if b == c.f.Quote || b == c.f.Escape {
			out = append(out, c.f.Escape)
		}
		out = append(out, b)
	}
	return append(out, c.f.Quote)
}

// appendRow appends row with fields replaced where repl has an entry.
func (c *copyCodec) appendRow(out []byte, row copyRow, repl map[int][]byte) []byte {
	if row.skip || len(repl) == 0 {
		return append(out, row.raw...)
	}
	for i, f := range row.fields {
		if i > 0 {
			out = append(out, c.f.Delimiter)
		}
		if r, ok := repl[i]; ok {
			out = append(out, r...)
		} else {
			out = append(out, f...)
		}
	}
	return append(out, row.eol...)
}

// unescapeText decodes a text-format field's backslash escapes.
func unescapeText(raw []byte) []byte {
	if bytes.IndexByte(raw, '\\') < 0 {
		return append([]byte{}, raw...)
	}
	out := make([]byte, 0, len(raw))
	for i := 0; i < len(raw); i++ {
		b := raw[i]
		if b != '\\' || i+1 == len(raw) {
			out = append(out, b)
			continue
		}
		i++
		switch n := raw[i]; n {
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'v':
			out = append(out, '\v')
		case 'x':
			v, k := 0, 0
			for k < 2 && i+1 < len(raw) && isHexDigit(raw[i+1]) {
				i++
				v = v*16 + hexVal(raw[i])
				k++
			}
			if k == 0 {
				out = append(out, 'x')
			} else {
				out = append(out, byte(v))
			}
		default:
			if n >= '0' && n <= '7' {
				v := int(n - '0')
				for k := 0; k < 2 && i+1 < len(raw) && raw[i+1] >= '0' && raw[i+1] <= '7'; k++ {
					i++
					v = v*8 + int(raw[i]-'0')
				}
				out = append(out, byte(v))
			} else {
				out = append(out, n)
			}
		}
	}
	return out
}

func hexVal(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	default:
		return int(c|0x20-'a') + 10
	}
}

// copyTransform encrypts (copy in) or decrypts (copy out) fields of COPY
// rows in batches.
type copyTransform struct {
	codec *copyCodec
	// cols maps field index → the column rule; decrypt says which way,
	// and masks the fields to decrypt then mask.
	cols    map[int]*rules.ColumnRule
	masks   map[int]rewrite.Output
	decrypt bool
	rows    []copyRow
	// failed is set when a conversion failed and the COPY was aborted:
	// the rest of the client's data is dropped.
	failed bool
}

// maxCopyBatch bounds the rows converted in one key-service call.
const maxCopyBatch = 1000

// add takes a CopyData payload and returns the converted bytes ready to
// send (possibly none while a batch fills).
func (t *copyTransform) add(srv *Server, data []byte, final bool) ([]byte, error) {
	rows, err := t.codec.rows(data, final)
	if err != nil {
		return nil, err
	}
	t.rows = append(t.rows, rows...)
	if len(t.rows) < maxCopyBatch && !final {
		return nil, nil
	}
	return t.flush(srv)
}

// flush converts and returns every held row.
func (t *copyTransform) flush(srv *Server) ([]byte, error) {
	if len(t.rows) == 0 {
		return nil, nil
	}
	repl := make([]map[int][]byte, len(t.rows))
	for idx, col := range t.cols {
		var at []int
		var in [][]byte
		for i, r := range t.rows {
			if r.skip || idx >= len(r.fields) {
				continue
			}
			if v := t.codec.value(r.fields[idx]); v != nil {
				at = append(at, i)
				in = append(in, v)
			}
		}
		if len(in) == 0 {
			continue
		}
		var out [][]byte
		var err error
		if t.decrypt {
			out, err = srv.decryptValues(col, in)
		} else {
			out, err = srv.encryptValues(col, in)
		}
		if err != nil {
			return nil, err
		}
		o, mask := t.masks[idx]
		for k, i := range at {
			v := out[k]
			if mask {
				typ := o.Type
				if typ == "" {
					typ = "text"
				}
				mv, err := col.Class.Mask.Apply(v, typ)
				if err != nil {
					return nil, &keyError{code: codeKeyService, msg: "pgveil: cannot mask a decrypted value: " + maskErr(err)}
				}
				v = mv
			}
			if repl[i] == nil {
				repl[i] = map[int][]byte{}
			}
			repl[i][idx] = t.codec.encode(v)
		}
	}
	var buf []byte
	for i, r := range t.rows {
		buf = t.codec.appendRow(buf, r, repl[i])
	}
	t.rows = t.rows[:0]
	return buf, nil
}

// copyData wraps payload in a CopyData message.
func copyData(payload []byte) []byte {
	out := make([]byte, 5, 5+len(payload))
	out[0] = 'd'
	out = append(out, payload...)
	putLength(out)
	return out
}

// newCopyIn returns the transform for COPY FROM STDIN rows of st, or nil.
func newCopyIn(st *rewrite.Statement) *copyTransform {
	if st == nil || st.Copy == nil || st.Copy.Binary || len(st.CopyEncrypt) == 0 {
		return nil
	}
	t := &copyTransform{codec: newCopyCodec(st.Copy), cols: map[int]*rules.ColumnRule{}}
	for _, f := range st.CopyEncrypt {
		t.cols[f.Index] = f.Rule
	}
	return t
}

// copyInOf returns the COPY FROM STDIN transform of a simple query's
// plan: that of its statement that copies into encrypted columns (the
// analysis refuses a text with more than one COPY when one of them needs
// encryption), or nil.
func copyInOf(plan *rewrite.Plan, err error) *copyTransform {
	if err != nil || plan == nil {
		return nil
	}
	for i := range plan.Statements {
		if t := newCopyIn(&plan.Statements[i]); t != nil {
			return t
		}
	}
	return nil
}

// newCopyOut returns the transform for COPY TO STDOUT rows of st, or nil.
func newCopyOut(st *rewrite.Statement) *copyTransform {
	if st == nil || st.Copy == nil || st.Copy.Binary || !st.OutputsKnown {
		return nil
	}
	t := &copyTransform{codec: newCopyCodec(st.Copy), cols: map[int]*rules.ColumnRule{}, masks: map[int]rewrite.Output{}, decrypt: true}
	for i, o := range st.Outputs {
		switch o.Transform {
		case rewrite.TransformDecrypt:
			t.cols[i] = o.Rule
		case rewrite.TransformDecryptMask:
			t.cols[i] = o.Rule
			t.masks[i] = o
		}
	}
	if len(t.cols) == 0 {
		return nil
	}
	return t
}

// copyIn handles the client's CopyData, CopyDone and CopyFail of a COPY
// FROM STDIN into an encrypted column: rows are encrypted in batches;
// if that fails, the server is sent a CopyFail (it answers with an error)
// and the rest of the client's data is dropped, never forwarded.
func (h *clientSide) copyIn(typ byte, msg []byte) error {
	s := h.s
	ci := s.copyIn.Load()
	write := func(b []byte) error {
		if err := s.toSrv.write(b, false); err != nil {
			return &writeError{err}
		}
		return nil
	}
	switch typ {
	case 'd':
		if ci.failed {
			return nil
		}
		out, err := ci.add(s.srv, msg[5:], false)
		if err != nil {
			return h.copyFail(ci, err)
		}
		if len(out) > 0 {
			return write(copyData(out))
		}
		return nil
	case 'c':
		s.copyIn.Store(nil)
		if ci.failed {
			return nil
		}
		out, err := ci.add(s.srv, nil, true)
		if err != nil {
			return h.copyFail(ci, err)
		}
		if len(out) > 0 {
			if err := write(copyData(out)); err != nil {
				return err
			}
		}
		return write(msg)
	default: // 'f'
		s.copyIn.Store(nil)
		if ci.failed {
			return nil
		}
		return write(msg)
	}
}

// copyFail aborts the COPY on the server with the reason.
func (h *clientSide) copyFail(ci *copyTransform, err error) error {
	ci.failed = true
	ci.rows = nil
	msg := err.Error()
	var ke *keyError
	if errors.As(err, &ke) {
		msg = ke.msg
	} else {
		msg = "pgveil: the COPY data could not be read: " + msg
	}
	b := make([]byte, 5, 6+len(msg))
	b[0] = 'f'
	b = append(b, msg...)
	b = append(b, 0)
	putLength(b)
	if werr := h.s.toSrv.write(b, false); werr != nil {
		return &writeError{werr}
	}
	return nil
}

func isHexDigit(c byte) bool {
	return c >= '0' && c <= '9' || c|0x20 >= 'a' && c|0x20 <= 'f'
}
