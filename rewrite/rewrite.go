// Package rewrite owns the analysis of SQL: for masked sessions it parses a
// statement with the PostgreSQL parser (pg_query_go), checks it against the
// statement and function allow-lists, replaces every reference to a
// relation the session may not read raw with a sub-query that projects the
// masked columns under their own names and types, and deparses the result.
// For every analysed statement, of masked and (with Session.Track) raw
// sessions alike, it reports the base columns the statement touches and
// how (Statement.Uses, for the usage ledger), and the lineage of each
// result column (Statement.Outputs: whether it is a direct reference to a
// base column, and what the proxy must do to its values: decrypt, or
// decrypt then mask).
//
// Rewrite is a pure function of (SQL text, Session): no I/O, no logging, no
// globals beyond read-only tables. A Plan, once returned, is immutable and
// may be cached and shared between sessions with equal inputs.
package rewrite

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/pgveil/pgveil/catalog"
	"github.com/pgveil/pgveil/rules"
)

// Session is everything a rewrite depends on. Its fields must not change
// once it is in use, and it is used by one goroutine at a time (KeyFor
// keeps a derived key in it).
type Session struct {
	// Policy is the loaded policy; Grants are the session's resolved
	// treatments (rules.Policy.Grants over the session's role set).
	Policy *rules.Policy
	Grants *rules.Grants
	// Catalog is the schema snapshot names are resolved against.
	Catalog *catalog.Snapshot
	// SearchPath is the session's search_path as the server holds it, e.g.
	// ["$user", "public"]; User expands "$user".
	SearchPath []string
	User       string
	// Track asks for usage facts and output lineage (Statement.Uses,
	// Statement.Outputs) for sessions whose grants see everything raw:
	// Rewrite then parses and analyses their text (see Analyze) instead of
	// returning it without a look. Masked sessions are always analysed.
	Track bool
	// SkipEncrypt turns off the write-path encryption analysis that
	// otherwise runs, for masked and raw sessions alike, whenever the
	// policy has encrypted columns (Statement.Encrypt, CopyEncrypt, and
	// the refusals of rule "encryption"; raw sessions' texts are then
	// always parsed). Only a caller that does not send the text to the
	// server (a check, a report) may set it: with encryption on, literals
	// become placeholders the proxy must replace by ciphertext.
	SkipEncrypt bool

	// projections caches masking sub-queries; set by Cache.Rewrite.
	projections *projectionCache
	// pathKey is the expanded search_path as KeyFor puts it in the key,
	// once computed.
	pathKey    string
	pathKeySet bool
}

// Plan is the outcome of analysing one client SQL text.
type Plan struct {
	// SQL is the text to send to the server. When Rewritten is false it is
	// the client's own text.
	SQL       string
	Rewritten bool
	// Analyzed is set when the text was parsed and Statements carry
	// usage facts and output lineage; it is false for a raw session's
	// text without Track, and for text the parser rejects in Analyze.
	Analyzed bool
	// Transforms is set when some output of some statement needs a
	// transform (Output.Transform), Encrypts when some statement lists
	// values to encrypt (Statement.Encrypt, CopyEncrypt): the proxy can
	// skip the per-column work when they are false.
	Transforms, Encrypts bool
	// Statements describes each statement of the text, in order.
	Statements []Statement
	// Memo is the caller's: the proxy's statement tracker keeps there what
	// it derives from the plan, once for every session that runs the
	// plan. This package does not use it.
	Memo atomic.Value
}

// Statement describes one analysed statement.
type Statement struct {
	// Kind is the statement's node type, e.g. "SelectStmt".
	Kind string
	// Masked lists the protected relations that were replaced by masking
	// sub-queries.
	Masked []catalog.Name
	// SearchPath is set when the statement sets search_path (SET, SET
	// LOCAL); ResetSearchPath when it restores the session default (RESET,
	// SET ... TO DEFAULT, RESET ALL, DISCARD ALL).
	SearchPath      []string
	ResetSearchPath bool
	// Role is set when the statement switches the current user (SET
	// ROLE), which changes what "$user" in search_path means; ResetRole
	// when it switches back (RESET ROLE, SET ROLE NONE, DISCARD ALL).
	Role      string
	ResetRole bool
	// Prepares names the statement a PREPARE creates; Executes the one an
	// EXECUTE runs; Deallocates the one a DEALLOCATE drops ("" with
	// DeallocateAll for DEALLOCATE ALL).
	Prepares, Executes, Deallocates string
	DeallocateAll                   bool
	// Declares names the cursor a DECLARE creates; Fetches the one a
	// FETCH or MOVE reads. FETCH returns the rows (and Outputs) of the
	// DECLARE, EXECUTE those of the PREPARE.
	Declares, Fetches string

	// Uses lists every base column the statement references, once, with
	// the union of the clause kinds it is used in and the session's
	// treatment, sorted by schema, table and column. A reference the
	// analysis cannot resolve exactly is attributed to every candidate.
	// A view column the policy does not classify is attributed to the
	// columns of the same name, and to every classified column, of the
	// tables the view reads (the catalog does not record which view
	// column comes from which table column). PREPARE and DECLARE record
	// the uses of their query: count them when EXECUTE or FETCH runs it.
	Uses []ColumnUse
	// Outputs has one entry per result column when OutputsKnown is set
	// (none for a statement that returns no rows). For DECLARE and
	// PREPARE it describes the query's columns, which FETCH and EXECUTE
	// return; for COPY ... TO, the columns of the COPY data. OutputsKnown
	// is false when the analysis cannot list the result columns (SHOW,
	// EXECUTE, FETCH, * over a function or an unknown relation, ...):
	// the proxy then applies no output transform.
	Outputs      []Output
	OutputsKnown bool

	// Encrypt lists the values the proxy must encrypt before the server
	// sees them, when the policy has encrypted columns: bound parameters
	// (by number) and literals (by placeholder in Plan.SQL) stored into an
	// encrypted column (INSERT, UPDATE SET, ON CONFLICT DO UPDATE SET,
	// MERGE) or compared with one in an equality predicate of a session
	// that reads it decrypted. What cannot be encrypted correctly is
	// refused with rule "encryption".
	Encrypt []EncryptValue
	// CopyEncrypt lists the fields of COPY FROM STDIN rows the proxy must
	// encrypt.
	CopyEncrypt []CopyField
	// Copy is the data format of a COPY ... FROM STDIN or TO STDOUT
	// statement, nil for any other statement.
	Copy *CopyFormat
}

// Refusal is a statement a masked session may not run. The proxy sends it
// as an ErrorResponse with SQLSTATE 42501.
type Refusal struct {
	// Rule is a stable label of the rule that refused, for logs and metrics.
	Rule string
	// Message explains the refusal to the client.
	Message string
}

func (r *Refusal) Error() string { return "pgveil: " + r.Message }

func refuse(rule, format string, args ...any) error {
	return &Refusal{Rule: rule, Message: fmt.Sprintf(format, args...)}
}

// SyntaxError is text the PostgreSQL parser rejects. The proxy sends it with
// SQLSTATE 42601, as the server would.
type SyntaxError struct {
	Message string
}

func (e *SyntaxError) Error() string { return e.Message }

// ErrNoSession is returned when Session lacks a policy, grants or catalog.
var ErrNoSession = errors.New("rewrite: incomplete session")

// Rewrite analyses sql for s. Sessions whose grants see everything raw get
// the text back unchanged. Otherwise the statements are checked and
// rewritten, or refused with a *Refusal (or *SyntaxError).
func Rewrite(sql string, s *Session) (*Plan, error) {
	if s == nil || s.Policy == nil || s.Grants == nil || s.Catalog == nil {
		return nil, ErrNoSession
	}
	encrypting := !s.SkipEncrypt && s.Policy.HasEncrypted()
	if s.Grants.AllRaw() {
		if s.Track || encrypting {
			return analyzeText(sql, s, encrypting)
		}
		return &Plan{SQL: sql}, nil
	}
	tree, err := pg_query.Parse(sql)
	if err != nil {
		return nil, &SyntaxError{Message: err.Error()}
	}
	plan := &Plan{Rewritten: true, Analyzed: true}
	var placeholders []placeholder
	literals := 0
	cur := *s
	for _, raw := range tree.Stmts {
		// The facts are read from the client's tree before the walker
		// rewrites it in place; the substitution keeps every column's
		// name and position, so they hold for the rewritten text too.
		var facts Statement
		var enc *encState
		if encrypting {
			enc = &encState{}
		}
		analyzeStatement(raw.Stmt, &cur, &facts, enc)
		copyFmt := copyFormatOf(raw.Stmt)
		w := newWalker(&cur, &placeholders)
		st, err := w.statement(raw.Stmt)
		if err != nil {
			return nil, err
		}
		if enc != nil {
			if err := encryptFacts(raw.Stmt, enc, &literals, &st); err != nil {
				return nil, err
			}
			st.CopyEncrypt = enc.copy
		}
		st.Masked = w.masked
		st.Copy = copyFmt
		st.Uses, st.Outputs, st.OutputsKnown = facts.Uses, facts.Outputs, facts.OutputsKnown
		st.Declares, st.Fetches = facts.Declares, facts.Fetches
		plan.Statements = append(plan.Statements, st)
		// Later statements of the same text run under what this one
		// set.
		advance(&cur, s, st)
	}
	if err := checkCopies(plan); err != nil {
		return nil, err
	}
	if len(tree.Stmts) == 0 {
		// An empty query (only comments or semicolons) becomes the empty
		// string, which the server answers with EmptyQueryResponse: even
		// text the parser found empty is never forwarded unanalysed.
		plan.SQL = ""
		return plan, nil
	}
	out, err := pg_query.Deparse(tree)
	if err != nil {
		return nil, refuse("deparse", "the statement cannot be re-serialised safely: %v", err)
	}
	// The deparser is not perfect (e.g. (0).f deparses to 0.f): what does
	// not parse again is refused rather than sent. (The masking
	// sub-queries spliced in below were checked the same way when built.)
	if _, err := pg_query.Parse(out); err != nil {
		return nil, refuse("deparse", "the statement cannot be re-serialised safely")
	}
	out, err = splice(out, placeholders, plan.Statements, literals)
	if err != nil {
		return nil, err
	}
	plan.SQL = out
	plan.summarise()
	return plan, nil
}

// splice replaces the masking placeholders of a deparsed text by their
// sub-queries and checks that the text carries each placeholder exactly
// once (the literal placeholders of encrypted values stay, for the proxy
// to replace).
func splice(out string, placeholders []placeholder, sts []Statement, literals int) (string, error) {
	if len(placeholders)+literals == 0 {
		return out, nil
	}
	bad := refuse("unsupported-syntax", "the text may not contain %q", placeholderPrefix)
	if strings.Count(out, placeholderPrefix) != len(placeholders)+literals {
		return "", bad
	}
	for _, st := range sts {
		for _, e := range st.Encrypt {
			if e.Placeholder != "" && strings.Count(out, e.Placeholder) != 1 {
				return "", bad
			}
		}
	}
	// Highest number first, so that pgveil_subst_1 is not found inside
	// pgveil_subst_10.
	for i := len(placeholders) - 1; i >= 0; i-- {
		p := placeholders[i]
		if strings.Count(out, p.name) != 1 {
			return "", bad
		}
		out = strings.Replace(out, p.name, "("+p.sql+")", 1)
	}
	return out, nil
}

// summarise sets the plan's Transforms and Encrypts flags.
func (p *Plan) summarise() {
	for _, st := range p.Statements {
		p.Encrypts = p.Encrypts || len(st.Encrypt) > 0 || len(st.CopyEncrypt) > 0
		for _, o := range st.Outputs {
			p.Transforms = p.Transforms || o.Transform != TransformNone
		}
	}
}
