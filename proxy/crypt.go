package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgveil/pgveil/rewrite"
	"github.com/pgveil/pgveil/rules"
)

// KeyService encrypts and decrypts the values of encrypted columns (the
// vaultkms services, adapted by main). Calls are batches: one call per
// column per batch of rows, never one per value. Its errors must not carry
// values.
type KeyService interface {
	Encrypt(ctx context.Context, col *rules.ColumnRule, plaintexts [][]byte) ([][]byte, error)
	Decrypt(ctx context.Context, col *rules.ColumnRule, ciphertexts [][]byte) ([][]byte, error)
}

// SQLSTATEs of the encryption layer: the key service is outside
// PostgreSQL (class 58, "system error"); a stored value that does not
// decrypt is data corruption (XX001).
const (
	codeKeyService    = "58000"
	codeDataCorrupted = "XX001"
)

// keyError is a statement that failed because of the key service. It
// travels as a refusal (the marker mechanism) but is reported with its own
// SQLSTATE.
type keyError struct {
	code, msg string
}

func (e *keyError) Error() string { return e.msg }

// keyContext bounds one key-service call.
func (s *Server) keyContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), s.cfg.KeyTimeout)
}

// keyFailure turns a key-service error into the error the client sees.
func keyFailure(op string, col *rules.ColumnRule, err error) *keyError {
	code := codeKeyService
	if strings.Contains(err.Error(), "invalid ciphertext") {
		code = codeDataCorrupted
	}
	return &keyError{code: code, msg: fmt.Sprintf("pgveil: cannot %s column %s.%s.%s: %v", op, col.Key.Schema, col.Key.Table, col.Key.Column, err)}
}

// encryptValues encrypts values of one column; nil stays nil (NULL).
func (s *Server) encryptValues(col *rules.ColumnRule, values [][]byte) ([][]byte, error) {
	keys := s.cfg.Keys
	if keys == nil {
		return nil, &keyError{code: codeKeyService, msg: "pgveil: encrypted columns need a key service (--keyring or --vault-addr)"}
	}
	var idx []int
	var in [][]byte
	for i, v := range values {
		if v != nil {
			idx = append(idx, i)
			in = append(in, v)
		}
	}
	out := make([][]byte, len(values))
	if len(in) == 0 {
		return out, nil
	}
	ctx, cancel := s.keyContext()
	defer cancel()
	ct, err := keys.Encrypt(ctx, col, in)
	if err == nil && len(ct) != len(in) {
		err = errors.New("key service returned a wrong number of values")
	}
	if err != nil {
		return nil, keyFailure("encrypt a value for", col, err)
	}
	for k, i := range idx {
		out[i] = ct[k]
	}
	return out, nil
}

// encryptLiterals replaces the literal placeholders of plan's text by the
// quoted ciphertexts of the literals.
func (m *maskedSession) encryptLiterals(sql string, plan *rewrite.Plan) (string, error) {
	type site struct {
		placeholder string
		value       []byte
	}
	byCol := map[*rules.ColumnRule][]site{}
	var order []*rules.ColumnRule
	for _, st := range plan.Statements {
		for _, e := range st.Encrypt {
			if e.Placeholder == "" {
				continue
			}
			if _, ok := byCol[e.Rule]; !ok {
				order = append(order, e.Rule)
			}
			byCol[e.Rule] = append(byCol[e.Rule], site{e.Placeholder, []byte(e.Literal)})
		}
	}
	for _, col := range order {
		sites := byCol[col]
		values := make([][]byte, len(sites))
		for i, s := range sites {
			values[i] = s.value
		}
		ct, err := m.s.srv.encryptValues(col, values)
		if err != nil {
			return "", err
		}
		for i, s := range sites {
			quoted := "'" + strings.ReplaceAll(string(ct[i]), "'", "''") + "'"
			if strings.Count(sql, s.placeholder) != 1 {
				return "", &rewrite.Refusal{Rule: "encryption", Message: "an encrypted literal could not be placed"}
			}
			sql = strings.Replace(sql, s.placeholder, quoted, 1)
		}
	}
	return sql, nil
}

// paramEncrypts lists the bound parameters of a plan's (single) statement
// that must be encrypted.
func paramEncrypts(plan *rewrite.Plan) []rewrite.EncryptValue {
	if plan == nil {
		return nil
	}
	var out []rewrite.EncryptValue
	for _, st := range plan.Statements {
		for _, e := range st.Encrypt {
			if e.Param > 0 {
				out = append(out, e)
			}
		}
	}
	return out
}

// encryptBind returns msg with the parameters listed in enc encrypted.
func (m *maskedSession) encryptBind(msg []byte, enc []rewrite.EncryptValue) ([]byte, error) {
	var b pgproto3.Bind
	if err := b.Decode(msg[5:]); err != nil {
		return nil, &protocolError{"malformed Bind message"}
	}
	byCol := map[*rules.ColumnRule][]int{}
	var order []*rules.ColumnRule
	for _, e := range enc {
		i := e.Param - 1
		if i < 0 || i >= len(b.Parameters) {
			continue // the server reports the missing parameter
		}
		if _, ok := byCol[e.Rule]; !ok {
			order = append(order, e.Rule)
		}
		byCol[e.Rule] = append(byCol[e.Rule], i)
	}
	if len(order) == 0 {
		return msg, nil
	}
	params := make([][]byte, len(b.Parameters))
	copy(params, b.Parameters)
	for _, col := range order {
		idx := byCol[col]
		values := make([][]byte, len(idx))
		for k, i := range idx {
			values[k] = params[i]
		}
		ct, err := m.s.srv.encryptValues(col, values)
		if err != nil {
			return nil, err
		}
		for k, i := range idx {
			params[i] = ct[k]
		}
	}
	b.Parameters = params
	return b.Encode(nil)
}

// rowBatch holds DataRows of a result whose columns need a transform
// until they are decrypted together. The messages are kept back to back
// in one buffer, reused from batch to batch.
type rowBatch struct {
	buf  []byte // whole DataRow messages
	ends []int  // end offset of each message in buf
	outs []rewrite.Output
	// vals and out are scratch space reused by flushBatch.
	vals [][]byte
	out  []byte
}

func (b *rowBatch) n() int { return len(b.ends) }

func (b *rowBatch) add(msg []byte) {
	b.buf = append(b.buf, msg...)
	b.ends = append(b.ends, len(b.buf))
}

func (b *rowBatch) reset() {
	b.buf, b.ends = b.buf[:0], b.ends[:0]
	if cap(b.buf) > 4<<20 {
		b.buf = nil // do not keep a huge batch's buffer
	}
}

// dataRowValuesAppend parses a DataRow message and appends its values
// (nil for NULL) to dst; the values alias msg.
func dataRowValuesAppend(msg []byte, dst [][]byte) ([][]byte, error) {
	body := msg[5:]
	if len(body) < 2 {
		return nil, &protocolError{"malformed DataRow from server"}
	}
	n := int(binary.BigEndian.Uint16(body))
	body = body[2:]
	for range n {
		if len(body) < 4 {
			return nil, &protocolError{"malformed DataRow from server"}
		}
		l := int32(binary.BigEndian.Uint32(body))
		body = body[4:]
		if l < 0 {
			dst = append(dst, nil)
			continue
		}
		if int(l) > len(body) {
			return nil, &protocolError{"malformed DataRow from server"}
		}
		dst = append(dst, body[:l:l])
		body = body[l:]
	}
	return dst, nil
}

// appendDataRow appends a DataRow message of values.
func appendDataRow(out []byte, values [][]byte) []byte {
	start := len(out)
	out = append(out, 'D', 0, 0, 0, 0, byte(len(values)>>8), byte(len(values)))
	for _, v := range values {
		if v == nil {
			out = binary.BigEndian.AppendUint32(out, 0xFFFFFFFF)
			continue
		}
		out = binary.BigEndian.AppendUint32(out, uint32(len(v)))
		out = append(out, v...)
	}
	putLength(out[start:])
	return out
}

// flushBatch decrypts (and masks) the held rows and writes them.
func (h *serverSide) flushBatch() error {
	b := &h.batch
	if b.n() == 0 {
		return nil
	}
	// All values of all rows, flat; rows[i] is row i's slice of it.
	b.vals = b.vals[:0]
	rows := make([][][]byte, b.n())
	start := 0
	for i, end := range b.ends {
		first := len(b.vals)
		var err error
		if b.vals, err = dataRowValuesAppend(b.buf[start:end], b.vals); err != nil {
			return err
		}
		rows[i] = b.vals[first:len(b.vals):len(b.vals)]
		start = end
	}
	for c, o := range b.outs {
		if o.Transform == rewrite.TransformNone || o.Rule == nil {
			continue
		}
		var idx []int
		var in [][]byte
		for i, vals := range rows {
			if c < len(vals) && vals[c] != nil {
				idx = append(idx, i)
				in = append(in, vals[c])
			}
		}
		if len(in) == 0 {
			continue
		}
		plain, err := h.s.srv.decryptValues(o.Rule, in)
		if err != nil {
			return err
		}
		for k, i := range idx {
			v := plain[k]
			if o.Transform == rewrite.TransformDecryptMask {
				typ := o.Type
				if typ == "" {
					typ = "text"
				}
				mv, err := o.Rule.Class.Mask.Apply(v, typ)
				if err != nil {
					return &keyError{code: codeKeyService, msg: fmt.Sprintf("pgveil: cannot mask a decrypted value of %s.%s.%s: %v", o.Rule.Key.Schema, o.Rule.Key.Table, o.Rule.Key.Column, maskErr(err))}
				}
				v = mv
			}
			rows[i][c] = v
		}
	}
	out := b.out[:0]
	for _, vals := range rows {
		out = appendDataRow(out, vals)
	}
	b.reset()
	err := h.write(out)
	if cap(out) <= 4<<20 {
		b.out = out
	}
	return err
}

// maskErr keeps a mask error's message free of the value.
func maskErr(err error) string {
	if errors.Is(err, rules.ErrMaskType) {
		return "the mask does not apply to this type"
	}
	return "the value does not fit the mask"
}

// decryptValues decrypts values of one column.
func (s *Server) decryptValues(col *rules.ColumnRule, values [][]byte) ([][]byte, error) {
	keys := s.cfg.Keys
	if keys == nil {
		return nil, &keyError{code: codeKeyService, msg: "pgveil: encrypted columns need a key service (--keyring or --vault-addr)"}
	}
	ctx, cancel := s.keyContext()
	defer cancel()
	start := time.Now()
	out, err := keys.Decrypt(ctx, col, values)
	if err == nil && len(out) != len(values) {
		err = errors.New("key service returned a wrong number of values")
	}
	if err != nil {
		s.log.Warn("decryption failed; the statement's rows are withheld", "column", col.Key.Schema+"."+col.Key.Table+"."+col.Key.Column, "err", err, "elapsed", time.Since(start))
		return nil, keyFailure("decrypt", col, err)
	}
	return out, nil
}

// withholdResult ends the current statement's result with err: the held
// rows are dropped, the client gets an ErrorResponse, and the rest of the
// server's answer up to ReadyForQuery is dropped (as the server itself
// skips the rest after an error).
func (h *serverSide) withholdResult(err error) error {
	h.batch.reset()
	var ke *keyError
	if !errors.As(err, &ke) {
		return err
	}
	h.withhold = true
	h.failed = true
	if t := h.s.track; t != nil {
		t.failed(ke.code, nil)
	}
	return h.write(errorMessage("ERROR", ke.code, ke.msg))
}
