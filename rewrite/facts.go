package rewrite

import (
	"strings"

	"github.com/pgveil/pgveil/rules"
)

// ClauseSet is a set of clause kinds: how a statement uses a column. The
// kinds are attributed to base columns through aliases, sub-queries, CTEs,
// views and *; a value computed from a column (upper(email), email || x,
// CASE WHEN ssn ... THEN ... END) counts as a use of the column in the
// clause the value ends up in.
type ClauseSet uint8

const (
	// ClauseOutput: the column's value, or a value computed from it,
	// reaches the client as a result column: the target list of the
	// statement's query (every branch of a set operation), RETURNING, the
	// rows of COPY ... TO, the query of DECLARE CURSOR or PREPARE (whose
	// rows FETCH and EXECUTE return), a whole-row reference (t, t.*,
	// row_to_json(t)) or a scalar or ARRAY sub-query in one of those.
	ClauseOutput ClauseSet = 1 << iota
	// ClauseFilter: the column decides which rows qualify: WHERE, HAVING,
	// an aggregate's FILTER (WHERE ...), the WHERE of ON CONFLICT, of
	// COPY FROM and of a partial-index arbiter, the arbiter columns of ON
	// CONFLICT, and the conditions of MERGE's WHEN clauses.
	ClauseFilter
	// ClauseJoin: the column relates rows of two relations: JOIN ... ON,
	// the columns of JOIN ... USING and the common columns of NATURAL JOIN
	// (on both sides), and MERGE's ON condition.
	ClauseJoin
	// ClauseGroupOrder: the column groups, sorts or de-duplicates rows:
	// GROUP BY (grouping sets included), ORDER BY, DISTINCT and DISTINCT
	// ON, a window's PARTITION BY and ORDER BY, and an aggregate's own
	// ORDER BY (string_agg(x, ',' ORDER BY y)).
	ClauseGroupOrder
	// ClauseAggregateArg: the column is (part of) an argument of an
	// aggregate function, plain or used as a window function. It comes
	// with the clause the aggregate's result is used in (max(salary) in a
	// target list is ClauseOutput|ClauseAggregateArg).
	ClauseAggregateArg
	// ClauseWriteTarget: the statement stores into the column: an INSERT
	// column list (every column when the list is omitted), UPDATE SET, ON
	// CONFLICT DO UPDATE SET, MERGE's UPDATE SET and INSERT, COPY FROM.
	ClauseWriteTarget
	// ClauseWriteSource: the column's value, or a value computed from it,
	// is stored into a table: the rows of INSERT ... SELECT, the
	// expressions of UPDATE SET, ON CONFLICT DO UPDATE SET and MERGE, and
	// the query of CREATE TABLE AS / SELECT INTO.
	ClauseWriteSource
	// ClauseOther: the column is referenced where none of the kinds above
	// applies: a column of a sub-query or CTE that the outer query never
	// reads, the arguments of a function in FROM whose result columns are
	// never read, LIMIT and OFFSET, window frame offsets, the query of a
	// utility statement (CREATE VIEW, ...), and references in statements
	// the analysis attributes only conservatively.
	ClauseOther
)

var clauseNames = [...]string{"output", "filter", "join", "group-order", "aggregate-arg", "write-target", "write-source", "other"}

// String returns the kinds joined by "|", e.g. "output|aggregate-arg".
func (c ClauseSet) String() string {
	var parts []string
	for i, n := range clauseNames {
		if c&(1<<i) != 0 {
			parts = append(parts, n)
		}
	}
	return strings.Join(parts, "|")
}

// ColumnUse is one base column a statement touches.
type ColumnUse struct {
	// Column is the column as the policy names it: a classified column
	// read through a partition or inheritance child is named by the
	// ancestor the policy classifies; an unclassified column of a
	// partition is named by the partitioned table at the root; a view
	// column the policy classifies is named by the view (views are
	// masked as views); other view columns are attributed to the
	// columns of the tables the view reads (see Statement.Uses).
	Column rules.ColumnKey
	// Clauses is the union of the ways the statement uses the column.
	Clauses ClauseSet
	// Treatment is the session's treatment of the column
	// (rules.Grants.ColumnTreatment): raw for unclassified columns.
	Treatment rules.Treatment
	// Rule is the column's policy rule, nil for an unclassified column.
	Rule *rules.ColumnRule
}

// Transform says what the proxy must do to the values of a result column.
type Transform uint8

const (
	// TransformNone: relay the values as the server sent them.
	TransformNone Transform = iota
	// TransformDecrypt: the values are ciphertext of an encrypted column
	// the session may decrypt: decrypt them with Output.Rule.Encrypted.
	TransformDecrypt
	// TransformDecryptMask: the values are ciphertext of an encrypted
	// column the session sees masked: decrypt them, then apply
	// Output.Rule.Class.Mask (its Go form, rules.Mask.Apply) to the
	// plaintext. The masking sub-query projects such columns as stored,
	// because masking ciphertext in SQL is meaningless.
	TransformDecryptMask
)

// String returns "none", "decrypt" or "decrypt-mask".
func (t Transform) String() string {
	switch t {
	case TransformDecrypt:
		return "decrypt"
	case TransformDecryptMask:
		return "decrypt-mask"
	}
	return "none"
}

// Output is the lineage of one result column.
type Output struct {
	// Source is the base column the result column is, unchanged: set only
	// when the column is, in every branch of every set operation, a plain
	// column reference that resolves (through sub-queries, CTEs, views
	// whose columns the policy classifies, *, aliases and renames) to
	// that column, with no function, operator, cast, CASE, COALESCE,
	// aggregate or sub-link in between. Nil when the analysis is not sure;
	// the proxy then relays the values untouched.
	Source *rules.ColumnKey
	// Rule is Source's policy rule (nil when unclassified or no Source).
	Rule *rules.ColumnRule
	// Type is Source's type as the catalog formats it (format_type, e.g.
	// "text"), the typ argument of rules.Mask.Apply.
	Type string
	// Transform is what the proxy must do to the column's values.
	Transform Transform
}

// transformFor returns the output transform of a direct reference to a
// column with rule r.
func transformFor(g *rules.Grants, r *rules.ColumnRule) Transform {
	if r == nil || r.Encrypted == nil {
		return TransformNone
	}
	switch g.ColumnTreatment(r) {
	case rules.TreatDecrypt:
		return TransformDecrypt
	case rules.TreatMask:
		if r.Class.Mask.Kind == rules.MaskDeny {
			// A denied column is projected as NULL, and explicit
			// references are refused.
			return TransformNone
		}
		return TransformDecryptMask
	}
	return TransformNone
}
