package rewrite

import (
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
)

// Statement templates let a masked session's simple-protocol queries that
// differ only in their constants share one rewrite, without parsing:
//
//	SELECT * FROM customers WHERE id = 17
//	SELECT * FROM customers WHERE id = 42
//
// The proxy scans each text for its literals (a lexical scan, no parse) and
// passes their positions with the text's shape, the text with every literal
// replaced by a NUL byte (Normalize). The first text of a shape is rewritten as usual; then
// the shape is rewritten once more with each literal replaced by a bound
// parameter ($50001, $50002, ...), and the output, cut at those parameters,
// becomes the shape's template. Later texts of the shape get the template
// with their own literals put back where the parameters were.
//
// Why this is as safe as rewriting every text: the parameterised text is
// exactly what a client of the extended protocol could send with Parse and
// then Bind with arbitrary values, and the rewrite must already be correct
// for every value of a parameter it cannot see. The server then receives
// the client's literal where that client's Bind value would have gone.
// Literals are put back only when they are plain '...' strings
// (standard_conforming_strings is pinned on for masked sessions) or
// unsigned numbers, so each one is exactly one token; anything else (E'',
// dollar quotes, B'', U&'') takes the ordinary path. Only shapes whose
// statements are all SELECTs without side effects on the session get a
// template, and a template is used only after it reproduced, for the
// shape's first text, the ordinary rewrite byte for byte with identical
// facts (uses, outputs). Shapes that fail any of this are remembered and
// take the ordinary path (a failed attempt is retried with a later text a
// few times, e.g. when the first text's literal printed differently).

// Literal locates a constant in a statement's text: sql[Start:End] is a
// plain quoted string or an unsigned numeric constant.
type Literal struct{ Start, End int }

// paramBase numbers the parameters that stand for literals in a template.
// PostgreSQL takes up to 65535 parameters; texts with more literals than
// fit above the base get no template.
const paramBase = 50001

// maxTemplateLiterals bounds the literals of a templated text.
const maxTemplateLiterals = 65535 - paramBase

// templateRetries is how many texts of a shape may fail to build a
// template before the shape stays on the ordinary path.
const templateRetries = 3

// maxTemplates bounds the templates a cache holds; the map is cleared when
// it is full (shapes are few in practice, this is a safety bound).
const maxTemplates = 10000

// template is the rewrite of one shape. parts has one more element than
// slots: the output is parts[0], literal slots[0], parts[1], ...
type template struct {
	plan  *Plan
	parts []string
	slots []int
	fixed int // total length of parts
	ok    bool
	fails int
	bound *Bound
}

// Bound is a template the proxy may run as a prepared statement of the
// session (prepare.go): SQL is the template with the text's literals as
// parameters $1..$n, numbered in text order; ID identifies the template in
// this process.
type Bound struct {
	ID  uint64
	SQL string
}

// boundIDs numbers Bound templates.
var boundIDs atomic.Uint64

// splice returns the template's text with the literals of sql.
func (t *template) splice(sql string, lits []Literal) string {
	n := t.fixed
	for _, s := range t.slots {
		n += lits[s].End - lits[s].Start
	}
	var b strings.Builder
	b.Grow(n)
	for i, s := range t.slots {
		b.WriteString(t.parts[i])
		b.WriteString(sql[lits[s].Start:lits[s].End])
	}
	b.WriteString(t.parts[len(t.slots)])
	return b.String()
}

// RewriteShape is Rewrite for a text whose literals the caller located:
// scan returns the text's shape and literals, and is called only when the
// exact text is not cached. It returns the plan and the text to send
// (Plan.SQL, or sql itself for a plan that is not Rewritten). On a
// template hit the returned plan is the shape's (its SQL holds parameters,
// not sql's literals): use the returned text; bound is then set when the
// text may run as a prepared statement instead (Bound, prepare.go), with
// the literals scan returned as its parameters. With bindOnly the caller
// runs a bound template whenever one is returned, and text is then empty
// (it is not built).
func (c *Cache) RewriteShape(sql string, s *Session, scan func() (string, []Literal), bindOnly bool) (plan *Plan, text string, bound *Bound, err error) {
	plan, text, t, err := c.rewriteShape(sql, s, scan, bindOnly)
	if t != nil {
		bound = t.bound
	}
	return plan, text, bound, err
}

func (c *Cache) rewriteShape(sql string, s *Session, scan func() (string, []Literal), bindOnly bool) (*Plan, string, *template, error) {
	if s == nil || s.Policy == nil || s.Grants == nil || s.Catalog == nil {
		return nil, "", nil, ErrNoSession
	}
	key := KeyFor(s, sql)
	c.mu.Lock()
	if el, ok := c.items[key]; ok {
		c.ll.MoveToFront(el)
		c.hits++
		e := el.Value.(*cacheEntry)
		c.mu.Unlock()
		return e.plan, planText(e.plan, sql), nil, e.err
	}
	c.mu.Unlock()
	if len(sql) > MaxCachedText {
		plan, err := c.Rewrite(sql, s) // analysed for this run only
		return plan, planText(plan, sql), nil, err
	}
	shape, lits := scan()
	if shape == "" || len(lits) == 0 || len(lits) > maxTemplateLiterals || s.Grants.AllRaw() {
		plan, err := c.Rewrite(sql, s)
		return plan, planText(plan, sql), nil, err
	}
	skey := key
	skey.SQL = shape
	c.mu.Lock()
	t := c.shapes[skey]
	if t != nil && t.ok && len(t.slots) == len(lits) {
		c.hits++
		c.shapeHits++
		c.mu.Unlock()
		if bindOnly && t.bound != nil {
			return t.plan, "", t, nil
		}
		return t.plan, t.splice(sql, lits), t, nil
	}
	c.mu.Unlock()
	plan, err := c.Rewrite(sql, s)
	if err != nil || (t != nil && t.fails >= templateRetries) {
		return plan, planText(plan, sql), nil, err
	}
	nt := c.buildTemplate(sql, s, lits, plan)
	c.mu.Lock()
	if old := c.shapes[skey]; old == nil || !old.ok {
		if old != nil && !nt.ok {
			nt.fails = old.fails + 1
		} else if !nt.ok {
			nt.fails = 1
		}
		size := templateSize(skey.SQL)
		if old != nil {
			c.shapeBytes -= size // replaced below
		}
		if len(c.shapes) >= maxTemplates || c.shapeBytes+size > maxCacheBytes {
			c.shapes = map[CacheKey]*template{}
			c.shapeBytes = 0
		}
		c.shapes[skey] = nt
		c.shapeBytes += size
	}
	c.mu.Unlock()
	return plan, planText(plan, sql), nil, nil
}

// templateSize estimates what the template of a shape holds: the shape,
// the template's parts, its plan and its prepared form.
func templateSize(shape string) int { return 4 * len(shape) }

// ShapeHits returns how many lookups a template answered.
func (c *Cache) ShapeHits() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.shapeHits
}

func planText(p *Plan, sql string) string {
	if p == nil || !p.Rewritten {
		return sql
	}
	return p.SQL
}

// buildTemplate builds the template of sql's shape from plan, sql's own
// rewrite. The result has ok false when the shape cannot have one.
func (c *Cache) buildTemplate(sql string, s *Session, lits []Literal, plan *Plan) *template {
	fail := &template{}
	if !templatable(plan) {
		return fail
	}
	var b strings.Builder
	b.Grow(len(sql) + 6*len(lits))
	prev := 0
	for i, l := range lits {
		if l.Start < prev || l.End <= l.Start || l.End > len(sql) {
			return fail
		}
		b.WriteString(sql[prev:l.Start])
		b.WriteByte('$')
		b.WriteString(strconv.Itoa(paramBase + i))
		prev = l.End
	}
	b.WriteString(sql[prev:])
	if listParam(b.String()) {
		return fail
	}
	withProj := *s
	withProj.projections = &c.proj
	pplan, err := Rewrite(b.String(), &withProj)
	if err != nil || !templatable(pplan) || pplan.Transforms != plan.Transforms || !reflect.DeepEqual(pplan.Statements, plan.Statements) {
		return fail
	}
	t, ok := cutTemplate(pplan.SQL, len(lits))
	if !ok {
		return fail
	}
	t.plan = pplan
	if t.splice(sql, lits) != plan.SQL {
		return fail
	}
	t.ok = true
	if preparable(b.String(), len(lits)) {
		var sb strings.Builder
		for i, k := range t.slots {
			sb.WriteString(t.parts[i])
			sb.WriteByte('$')
			sb.WriteString(strconv.Itoa(k + 1))
		}
		sb.WriteString(t.parts[len(t.slots)])
		t.bound = &Bound{ID: boundIDs.Add(1), SQL: sb.String()}
	}
	return t
}

// templatable reports whether a plan's statements are all SELECTs that
// change nothing in the session and need no encryption.
func templatable(p *Plan) bool {
	if p == nil || !p.Rewritten || !p.Analyzed || p.Encrypts || len(p.Statements) == 0 {
		return false
	}
	for i := range p.Statements {
		st := &p.Statements[i]
		if st.Kind != "SelectStmt" || st.SearchPath != nil || st.ResetSearchPath || st.Role != "" || st.ResetRole ||
			st.Prepares != "" || st.Executes != "" || st.Deallocates != "" || st.DeallocateAll ||
			st.Declares != "" || st.Fetches != "" || st.Copy != nil || len(st.Encrypt) > 0 || len(st.CopyEncrypt) > 0 {
			return false
		}
	}
	return true
}

// cutTemplate cuts out, the rewrite of a parameterised text, at the
// parameters $paramBase .. $paramBase+n-1. Each must occur exactly once,
// and no other parameter may occur. Quoted strings, quoted identifiers and
// dollar-quoted strings are skipped.
func cutTemplate(out string, n int) (*template, bool) {
	t := &template{slots: make([]int, 0, n)}
	seen := make([]bool, n)
	prev := 0
	for i := 0; i < len(out); i++ {
		c := out[i]
		switch {
		case c == '\'' || c == '"':
			backslash := c == '\'' && i > 0 && out[i-1]|0x20 == 'e' && (i == 1 || !identByte(out[i-2]))
			j := i + 1
			for ; j < len(out); j++ {
				if backslash && out[j] == '\\' {
					j++
					continue
				}
				if out[j] == c {
					if j+1 < len(out) && out[j+1] == c {
						j++
						continue
					}
					break
				}
			}
			if j >= len(out) {
				return nil, false
			}
			i = j
		case identByte(c):
			for i+1 < len(out) && (identByte(out[i+1]) || out[i+1] == '$') {
				i++
			}
		case c == '$' && i+1 < len(out) && out[i+1] >= '0' && out[i+1] <= '9':
			j := i + 1
			for j < len(out) && out[j] >= '0' && out[j] <= '9' {
				j++
			}
			num, err := strconv.Atoi(out[i+1 : j])
			k := num - paramBase
			if err != nil || k < 0 || k >= n || seen[k] {
				return nil, false
			}
			seen[k] = true
			t.parts = append(t.parts, out[prev:i])
			t.slots = append(t.slots, k)
			prev = j
			i = j - 1
		case c == '$':
			// A dollar-quoted string: $tag$ ... $tag$.
			j := i + 1
			for j < len(out) && identByte(out[j]) {
				j++
			}
			if j >= len(out) || out[j] != '$' {
				return nil, false
			}
			tag := out[i : j+1]
			end := strings.Index(out[j+1:], tag)
			if end < 0 {
				return nil, false
			}
			i = j + 1 + end + len(tag) - 1
		}
	}
	if len(t.slots) != n {
		return nil, false
	}
	t.parts = append(t.parts, out[prev:])
	for _, p := range t.parts {
		t.fixed += len(p)
	}
	return t, true
}

// identByte reports whether c may be part of an unquoted identifier or
// keyword (after its first byte, which is never a digit or '$' here).
func identByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c >= '0' && c <= '9' || c >= 0x80
}
