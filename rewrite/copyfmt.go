package rewrite

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// CopyFormat is the data format of a COPY ... FROM STDIN or TO STDOUT
// statement (PostgreSQL documentation, COPY: "File Formats"), so the
// proxy can find the fields of its rows.
type CopyFormat struct {
	// Binary is the binary format; CSV the CSV format; neither is the text
	// format.
	Binary, CSV bool
	// Delimiter separates fields: tab (text) or ',' (CSV) by default.
	Delimiter byte
	// Quote and Escape are the CSV quote and escape characters ('"' by
	// default; Escape defaults to Quote).
	Quote, Escape byte
	// Null is the string that stands for NULL: `\N` (text) or an unquoted
	// empty field (CSV) by default.
	Null string
	// Header says the first line is a header (CSV only for FROM in
	// PostgreSQL 15; text too for TO).
	Header bool
	// From says the data comes from the client (COPY ... FROM STDIN),
	// not to it (TO STDOUT).
	From bool
}

// copyFormatOf returns the format of a COPY statement that exchanges data
// with the client, or nil.
func copyFormatOf(n *pg_query.Node) *CopyFormat {
	c := n.GetCopyStmt()
	if c == nil || c.Filename != "" || c.IsProgram {
		return nil
	}
	f := &CopyFormat{From: c.IsFrom}
	delim, quote, escape, null := "", "", "", ""
	hasNull := false
	for _, o := range c.Options {
		d := o.GetDefElem()
		if d == nil {
			continue
		}
		v := defString(d)
		switch d.Defname {
		case "format":
			switch strings.ToLower(v) {
			case "csv":
				f.CSV = true
			case "binary":
				f.Binary = true
			}
		case "delimiter":
			delim = v
		case "quote":
			quote = v
		case "escape":
			escape = v
		case "null":
			null, hasNull = v, true
		case "header":
			f.Header = v == "" || !isFalse(v)
		}
	}
	f.Delimiter = '\t'
	if f.CSV {
		f.Delimiter, f.Quote, f.Escape = ',', '"', '"'
	}
	if len(delim) == 1 {
		f.Delimiter = delim[0]
	}
	if len(quote) == 1 {
		f.Quote = quote[0]
		if escape == "" {
			f.Escape = f.Quote
		}
	}
	if len(escape) == 1 {
		f.Escape = escape[0]
	}
	switch {
	case hasNull:
		f.Null = null
	case !f.CSV:
		f.Null = `\N`
	}
	return f
}

// checkCopies refuses a text that copies into an encrypted column and
// holds another COPY: the proxy must know which statement the client's
// COPY data belongs to before the server says (clients may stream it
// without waiting for CopyInResponse). It also refuses a text with more
// than one COPY FROM STDIN: the proxy follows one COPY FROM STDIN per
// sync point, to know which of the client's Sync messages the server
// ignores (those it reads during the COPY).
func checkCopies(p *Plan) error {
	copies, froms, encrypted := 0, 0, false
	for _, st := range p.Statements {
		if st.Copy != nil {
			copies++
			if st.Copy.From {
				froms++
			}
		}
		encrypted = encrypted || len(st.CopyEncrypt) > 0
	}
	if encrypted && copies > 1 {
		return refuse("encryption", "a COPY into an encrypted column must be the only COPY of its query text")
	}
	if froms > 1 {
		return refuse("copy", "a query text may hold only one COPY ... FROM STDIN")
	}
	return nil
}

// defString returns a DefElem's argument as text ("" when it has none).
func defString(d *pg_query.DefElem) string {
	if d.Arg == nil {
		return ""
	}
	switch a := d.Arg.Node.(type) {
	case *pg_query.Node_String_:
		return a.String_.Sval
	case *pg_query.Node_Integer:
		if a.Integer.Ival == 0 {
			return "false"
		}
		return "true"
	case *pg_query.Node_Boolean:
		if a.Boolean.Boolval {
			return "true"
		}
		return "false"
	}
	return ""
}

func isFalse(v string) bool {
	switch strings.ToLower(v) {
	case "false", "off", "0", "no":
		return true
	}
	return false
}
