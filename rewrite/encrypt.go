package rewrite

import (
	"slices"
	"strconv"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/pgveil/pgveil/rules"
)

// EncryptValue is a value the proxy must encrypt before the server sees
// it: a value stored into an encrypted column, or compared with one in a
// searchable equality predicate.
type EncryptValue struct {
	// Column is the encrypted column; Rule its policy rule, whose
	// Encrypted says with which key and mode.
	Column rules.ColumnKey
	Rule   *rules.ColumnRule
	// Param is the number of the bound parameter ($1 is 1) whose value the
	// proxy encrypts in Bind; zero for a literal.
	Param int
	// Placeholder is, for a literal, the quoted string constant that
	// Plan.SQL carries in its place ('pgveil_subst_lit_0'): the proxy
	// replaces it with the quoted ciphertext of Literal.
	Placeholder string
	// Literal is the literal's value as the client wrote it (unquoted).
	Literal string
	// Compare is set for a value compared with the column: it must be
	// encrypted deterministically (the column is searchable).
	Compare bool
}

// CopyField is a field of COPY FROM STDIN data rows (text or CSV format)
// that the proxy must encrypt.
type CopyField struct {
	// Index is the field's 0-based position in each row.
	Index  int
	Column rules.ColumnKey
	Rule   *rules.ColumnRule
}

// literalPrefix starts the placeholder of an encrypted literal. It shares
// placeholderPrefix, so client text containing it is refused.
const literalPrefix = placeholderPrefix + "lit_"

// encSite is a value the analysis found must be encrypted.
type encSite struct {
	konst   *pg_query.A_Const
	pref    *pg_query.ParamRef
	param   int32
	col     dep
	compare bool
}

// add records a site once (a query may be analysed more than once, e.g.
// the terms of a recursive CTE).
func (e *encState) add(s encSite) {
	for _, o := range e.sites {
		if (s.konst != nil && o.konst == s.konst) || (s.pref != nil && o.pref == s.pref) {
			return
		}
	}
	e.sites = append(e.sites, s)
}

// encState collects the write-path encryption facts of one statement.
type encState struct {
	sites   []encSite
	copy    []CopyField
	refusal error
}

func (e *encState) refuse(format string, args ...any) {
	if e.refusal == nil {
		e.refusal = refuse("encryption", format, args...)
	}
}

func keyString(k rules.ColumnKey) string {
	return quoteIdent(k.Schema) + "." + quoteIdent(k.Table) + "." + quoteIdent(k.Column)
}

// encryptedDirect returns the encrypted column a value is, unchanged.
func encryptedDirect(l lin) (dep, bool) {
	if l.direct && len(l.deps) == 1 && l.deps[0].rule != nil && l.deps[0].rule.Encrypted != nil {
		return l.deps[0], true
	}
	return dep{}, false
}

// valueKind classifies a value expression for encryption.
type valueKind int

const (
	valueOther valueKind = iota
	valueConst
	valueParam
	valueNull    // NULL, stored or compared as is
	valueDefault // DEFAULT
)

// classify unwraps casts ('x'::text, $1::text) and returns what a value
// is, with its constant or parameter.
func classify(n *pg_query.Node) (valueKind, *pg_query.A_Const, *pg_query.ParamRef) {
	for {
		tc := n.GetTypeCast()
		if tc == nil {
			break
		}
		n = tc.Arg
	}
	switch x := n.GetNode().(type) {
	case *pg_query.Node_AConst:
		if x.AConst.Isnull {
			return valueNull, nil, nil
		}
		switch x.AConst.Val.(type) {
		case *pg_query.A_Const_Sval, *pg_query.A_Const_Ival, *pg_query.A_Const_Fval:
			return valueConst, x.AConst, nil
		}
	case *pg_query.Node_ParamRef:
		return valueParam, nil, x.ParamRef
	case *pg_query.Node_SetToDefault:
		return valueDefault, nil, nil
	}
	return valueOther, nil, nil
}

// storeValue records a value stored into encrypted column col: a
// literal or parameter is encrypted; NULL and DEFAULT are stored as they
// are; anything else cannot be encrypted by the proxy and is refused,
// unless it is already ciphertext of a column with the same key (l, when
// known, is its lineage).
func (a *analyzer) storeValue(col dep, n *pg_query.Node, l *lin) {
	kind, c, p := classify(n)
	switch kind {
	case valueConst:
		a.enc.add(encSite{konst: c, col: col})
		return
	case valueParam:
		a.enc.add(encSite{pref: p, param: p.Number, col: col})
		return
	case valueNull, valueDefault:
		return
	}
	if l != nil {
		if src, ok := encryptedDirect(*l); ok && src.rule.Encrypted.Key == col.rule.Encrypted.Key {
			return
		}
	}
	a.enc.refuse("the value stored into encrypted column %s must be a parameter, a literal or that column's own ciphertext: pgveil cannot encrypt a computed or plaintext value", keyString(col.key))
}

// encryptedTarget returns the encrypted column a DML target column is.
func encryptedTarget(c rcol) (dep, bool) {
	return encryptedDirect(c.st.l)
}

// checkCompare applies the encryption rules to an operator expression
// whose operands have lineage l and r.
func (a *analyzer) checkCompare(e *pg_query.A_Expr, l, r lin) {
	lc, lok := encryptedDirect(l)
	rc, rok := encryptedDirect(r)
	if !lok && !rok {
		return
	}
	col, other := lc, e.Rexpr
	if !lok {
		col, other = rc, e.Lexpr
	}
	op := ""
	if len(e.Name) > 0 {
		op = e.Name[len(e.Name)-1].GetString_().GetSval()
	}
	equality := false
	switch e.Kind {
	case pg_query.A_Expr_Kind_AEXPR_OP:
		switch op {
		case "=", "<>", "!=":
			equality = true
		case "<", ">", "<=", ">=", "~", "~*", "!~", "!~*", "~~", "~~*", "!~~", "!~~*":
			a.enc.refuse("encrypted column %s holds ciphertext: %s cannot be evaluated on it", keyString(col.key), op)
			return
		default:
			return
		}
	case pg_query.A_Expr_Kind_AEXPR_DISTINCT, pg_query.A_Expr_Kind_AEXPR_NOT_DISTINCT, pg_query.A_Expr_Kind_AEXPR_NULLIF:
		equality = true
	case pg_query.A_Expr_Kind_AEXPR_IN:
		equality = true
	case pg_query.A_Expr_Kind_AEXPR_LIKE, pg_query.A_Expr_Kind_AEXPR_ILIKE, pg_query.A_Expr_Kind_AEXPR_SIMILAR,
		pg_query.A_Expr_Kind_AEXPR_BETWEEN, pg_query.A_Expr_Kind_AEXPR_NOT_BETWEEN,
		pg_query.A_Expr_Kind_AEXPR_BETWEEN_SYM, pg_query.A_Expr_Kind_AEXPR_NOT_BETWEEN_SYM:
		a.enc.refuse("encrypted column %s holds ciphertext: LIKE, SIMILAR TO and BETWEEN cannot be evaluated on it", keyString(col.key))
		return
	case pg_query.A_Expr_Kind_AEXPR_OP_ANY, pg_query.A_Expr_Kind_AEXPR_OP_ALL:
		if a.s.Grants.ColumnTreatment(col.rule) == rules.TreatDecrypt {
			a.enc.refuse("encrypted column %s cannot be compared with ANY or ALL of an array: use IN with a list", keyString(col.key))
		}
		return
	}
	if !equality || (lok && rok) {
		return
	}
	// Only a session that reads the column decrypted compares it with
	// plaintext: for others the column is ciphertext (or masked), and
	// encrypting their values would let them test guesses against it.
	if a.s.Grants.ColumnTreatment(col.rule) != rules.TreatDecrypt {
		return
	}
	if !col.rule.Encrypted.Searchable {
		a.enc.refuse("encrypted column %s is not searchable: equality with it cannot be evaluated (the policy can make it searchable)", keyString(col.key))
		return
	}
	values := []*pg_query.Node{other}
	if list := other.GetList(); list != nil {
		values = list.Items
	}
	for _, v := range values {
		kind, c, p := classify(v)
		switch kind {
		case valueConst:
			a.enc.add(encSite{konst: c, col: col, compare: true})
		case valueParam:
			a.enc.add(encSite{pref: p, param: p.Number, col: col, compare: true})
		case valueNull:
		default:
			a.enc.refuse("encrypted column %s can be compared only with parameters, literals or another encrypted column", keyString(col.key))
		}
	}
}

// checkSubLink applies the equality rules to x IN (SELECT ...) and x op
// ANY/ALL (SELECT ...): a session that reads x decrypted compares it with
// plaintext, so the sub-query must return ciphertext of the same key.
func (a *analyzer) checkSubLink(test lin, res qres) {
	col, ok := encryptedDirect(test)
	if !ok || a.s.Grants.ColumnTreatment(col.rule) != rules.TreatDecrypt {
		return
	}
	for _, c := range res.cols {
		if src, ok := encryptedDirect(c.st.l); !ok || src.rule.Encrypted.Key != col.rule.Encrypted.Key {
			a.enc.refuse("encrypted column %s can be compared with a sub-query only when it returns a column encrypted with the same key", keyString(col.key))
			return
		}
	}
}

// checkOrder refuses sorting by an encrypted column.
func (a *analyzer) checkOrder(l lin) {
	if a.enc == nil {
		return
	}
	if col, ok := encryptedDirect(l); ok {
		a.enc.refuse("encrypted column %s holds ciphertext: ORDER BY cannot sort it", keyString(col.key))
	}
}

// insertSource stores the rows of INSERT ... VALUES (or of a SELECT
// without FROM) into the encrypted columns among targets, and refuses an
// INSERT ... SELECT that copies anything but same-key ciphertext into
// one.
func (a *analyzer) insertSource(targets []rcol, src *pg_query.Node, res qres) {
	enc := false
	for _, t := range targets {
		if _, ok := encryptedTarget(t); ok {
			enc = true
		}
	}
	if !enc {
		return
	}
	sel := src.GetSelectStmt()
	var rows [][]*pg_query.Node
	switch {
	case sel != nil && len(sel.ValuesLists) > 0:
		for _, r := range sel.ValuesLists {
			rows = append(rows, r.GetList().GetItems())
		}
	}
	// The target list of a plain SELECT, when it has no *: its values
	// line up with the targets.
	var plain []*pg_query.Node
	if sel != nil && sel.Op == pg_query.SetOperation_SETOP_NONE && len(sel.ValuesLists) == 0 {
		for _, t := range sel.TargetList {
			v := t.GetResTarget().GetVal()
			if c := v.GetColumnRef(); c != nil && isStar(c) {
				plain = nil
				break
			}
			plain = append(plain, v)
		}
	}
	for i, t := range targets {
		col, ok := encryptedTarget(t)
		if !ok {
			continue
		}
		if rows == nil {
			// INSERT ... SELECT: a parameter or literal is encrypted;
			// otherwise only ciphertext of the same key may be copied.
			if i < len(plain) && i < len(res.cols) {
				if kind, _, _ := classify(plain[i]); kind != valueOther {
					a.storeValue(col, plain[i], &res.cols[i].st.l)
					continue
				}
			}
			if i < len(res.cols) {
				l := res.cols[i].st.l
				if src, ok := encryptedDirect(l); ok && src.rule.Encrypted.Key == col.rule.Encrypted.Key {
					continue
				}
			}
			a.enc.refuse("INSERT ... SELECT into encrypted column %s reads a plaintext or computed source: pgveil cannot encrypt it (insert parameters or literals)", keyString(col.key))
			continue
		}
		for _, row := range rows {
			if i < len(row) {
				a.storeValue(col, row[i], nil)
			}
		}
	}
}

// setValues stores the values of a SET list into encrypted columns of it.
// In SET (a, b) = (x, y) every target carries a copy of the source; the
// deparser prints the first one's, so that is the copy used.
func (a *analyzer) setValues(it *item, list []*pg_query.Node, sc *scope) {
	var group *pg_query.Node
	for _, t := range list {
		rt := t.GetResTarget()
		if rt == nil {
			continue
		}
		mar := rt.Val.GetMultiAssignRef()
		if mar != nil && mar.Colno == 1 {
			group = mar.Source
		}
		c, ok := findCol(it.cols, rt.Name)
		if !ok {
			continue
		}
		col, ok := encryptedTarget(c)
		if !ok {
			continue
		}
		if len(rt.Indirection) > 0 {
			a.enc.refuse("encrypted column %s cannot be assigned in part", keyString(col.key))
			continue
		}
		val := rt.Val
		if mar != nil {
			row := group.GetRowExpr()
			if row == nil || int(mar.Colno) > len(row.Args) || mar.Colno < 1 {
				a.enc.refuse("encrypted column %s must be assigned a parameter or a literal", keyString(col.key))
				continue
			}
			val = row.Args[mar.Colno-1]
		}
		l := a.expr(val, sc)
		a.storeValue(col, val, &l)
	}
}

// copyFrom lists the encrypted fields of COPY FROM rows.
func (a *analyzer) copyFrom(c *pg_query.CopyStmt, cols []rcol) {
	if c.Filename != "" || c.IsProgram {
		for _, col := range cols {
			if d, ok := encryptedTarget(col); ok {
				a.enc.refuse("COPY FROM a file or program into encrypted column %s would store plaintext: use COPY FROM STDIN through pgveil", keyString(d.key))
				return
			}
		}
		return
	}
	binary := false
	for _, o := range c.Options {
		if d := o.GetDefElem(); d != nil && d.Defname == "format" {
			v := d.Arg.GetString_().GetSval()
			binary = strings.EqualFold(v, "binary")
		}
	}
	for i, col := range cols {
		d, ok := encryptedTarget(col)
		if !ok {
			continue
		}
		if binary {
			a.enc.refuse("COPY FROM in binary format into encrypted column %s is not supported: use text or CSV format", keyString(d.key))
			return
		}
		a.enc.copy = append(a.enc.copy, CopyField{Index: i, Column: d.key, Rule: d.rule})
	}
}

// encryptFacts turns the sites into EncryptValues, replacing each
// literal in the tree by a numbered placeholder (counted across the text
// by *next). A parameter is encrypted for one column only: one that is
// also used anywhere else, or for two keys, is refused.
func encryptFacts(n *pg_query.Node, e *encState, next *int, st *Statement) error {
	if e.refusal != nil {
		return e.refusal
	}
	if len(e.sites) == 0 {
		return nil
	}
	uses := map[int32]int{}
	countParams(n, uses)
	byParam := map[int32][]encSite{}
	for _, s := range e.sites {
		if s.konst == nil {
			byParam[s.param] = append(byParam[s.param], s)
		}
	}
	for p, sites := range byParam {
		for _, s := range sites[1:] {
			if s.col.rule.Encrypted.Key != sites[0].col.rule.Encrypted.Key || s.col.rule.Encrypted.Mode != sites[0].col.rule.Encrypted.Mode {
				return refuse("encryption", "parameter $%d is used for encrypted columns with different keys", p)
			}
		}
		if uses[p] != len(sites) {
			return refuse("encryption", "parameter $%d is used both for encrypted column %s and elsewhere: pass the value twice", p, keyString(sites[0].col.key))
		}
	}
	if len(byParam) > 0 && st.Prepares != "" {
		return refuse("encryption", "PREPARE with a parameter for an encrypted column is not supported: prepare it with the extended query protocol")
	}
	seen := map[int32]bool{}
	for _, s := range e.sites {
		v := EncryptValue{Column: s.col.key, Rule: s.col.rule, Compare: s.compare}
		if s.konst == nil {
			if seen[s.param] {
				continue
			}
			seen[s.param] = true
			v.Param = int(s.param)
		} else {
			v.Literal = constText(s.konst)
			name := literalPrefix + strconv.Itoa(*next)
			*next++
			v.Placeholder = "'" + name + "'"
			s.konst.Val = &pg_query.A_Const_Sval{Sval: &pg_query.String{Sval: name}}
		}
		st.Encrypt = append(st.Encrypt, v)
	}
	slices.SortStableFunc(st.Encrypt, func(x, y EncryptValue) int { return x.Param - y.Param })
	return nil
}

// constText returns a constant's value as text.
func constText(c *pg_query.A_Const) string {
	switch v := c.Val.(type) {
	case *pg_query.A_Const_Sval:
		return v.Sval.Sval
	case *pg_query.A_Const_Ival:
		return strconv.Itoa(int(v.Ival.Ival))
	case *pg_query.A_Const_Fval:
		return v.Fval.Fval
	}
	return ""
}

// countParams counts the references to each parameter under n.
func countParams(n *pg_query.Node, out map[int32]int) {
	var visit func(m protoreflect.Message)
	visit = func(m protoreflect.Message) {
		switch x := m.Interface().(type) {
		case *pg_query.ParamRef:
			out[x.Number]++
			return
		case *pg_query.MultiAssignRef:
			if x.Colno > 1 {
				// A copy of the first target's source (see setValues).
				return
			}
		}
		forEachChild(m, visit)
	}
	visit(n.ProtoReflect())
}
