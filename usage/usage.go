// Package usage owns pgveil's per-column usage ledger: it counts, per hour,
// which base columns every statement touched (in which clauses and with
// which treatment), flushes those counts to a store (SQLite or
// PostgreSQL), and turns the stored counts into the data-minimisation
// report of pgveil report.
//
// The proxy calls Ledger.Record once per statement; Record only updates
// in-memory counters under a mutex and never waits on the store. A flusher
// goroutine writes the accumulated deltas to the Store every
// Config.FlushInterval. Stores apply deltas as additive upserts, which
// commute, so many proxies may share one store.
package usage

import (
	"fmt"
	"strings"
	"time"
)

// ClauseSet is a bitmask of the clause kinds in which a statement used a
// column.
type ClauseSet uint8

// Clause kinds.
const (
	// Output is a column whose value (or an expression over it) is
	// returned to the client.
	Output ClauseSet = 1 << iota
	// Filter is a column used in WHERE, HAVING or a join's ON condition
	// other than an equi-join key.
	Filter
	// Join is a column used as a join key.
	Join
	// GroupOrder is a column used in GROUP BY, ORDER BY, DISTINCT or a
	// window's PARTITION/ORDER BY.
	GroupOrder
	// AggregateArg is a column passed to an aggregate function.
	AggregateArg
	// WriteTarget is a column written by INSERT, UPDATE or COPY FROM.
	WriteTarget
)

// clauseKinds lists the clause bits in counter order.
var clauseKinds = [...]ClauseSet{Output, Filter, Join, GroupOrder, AggregateArg, WriteTarget}

// clauseNames are the names of clauseKinds, in the same order.
var clauseNames = [...]string{"output", "filter", "join", "group_order", "aggregate_arg", "write_target"}

// String returns the set's clause names joined by "|", or "none".
func (c ClauseSet) String() string {
	var parts []string
	for i, k := range clauseKinds {
		if c&k != 0 {
			parts = append(parts, clauseNames[i])
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, "|")
}

// Reads reports whether the set reads the column: any clause other than
// WriteTarget.
func (c ClauseSet) Reads() bool { return c&^WriteTarget != 0 }

// Treatment is how the proxy let a statement see a column.
type Treatment uint8

// Treatments. Unclassified columns are always Raw.
const (
	// Raw is the stored value, unchanged.
	Raw Treatment = iota
	// Masked is the value through the class's mask function.
	Masked
	// Decrypted is a value stored encrypted and decrypted by the proxy.
	Decrypted
	// Refused is a statement the proxy rejected because of this column.
	Refused
	numTreatments
)

// treatmentNames are the stable names of the treatments, used in stores,
// reports and metrics labels.
var treatmentNames = [numTreatments]string{"raw", "masked", "decrypted", "refused"}

// String returns "raw", "masked", "decrypted" or "refused".
func (t Treatment) String() string {
	if t < numTreatments {
		return treatmentNames[t]
	}
	return fmt.Sprintf("Treatment(%d)", uint8(t))
}

// ParseTreatment is the inverse of Treatment.String.
func ParseTreatment(s string) (Treatment, error) {
	for i, n := range treatmentNames {
		if n == s {
			return Treatment(i), nil
		}
	}
	return 0, fmt.Errorf("unknown treatment %q", s)
}

// Treatments returns every treatment in order.
func Treatments() []Treatment { return []Treatment{Raw, Masked, Decrypted, Refused} }

// ColumnUse is one base column a statement touched.
type ColumnUse struct {
	Schema, Table, Column string
	// Clauses are the clause kinds the column appeared in.
	Clauses ClauseSet
	// Treatment is how the statement saw the column.
	Treatment Treatment
}

// Statement is what the proxy reports about one executed (or refused)
// statement. The ledger does not keep the Statement or its slices after
// Record returns.
type Statement struct {
	// Time is when the statement ran; the zero time means now.
	Time time.Time
	// Database is the session's database.
	Database string
	// User is the login user.
	User string
	// Roles is the session's full role set: the login user and every role
	// it is a member of (as the policy was resolved against). The order
	// does not matter; the ledger keys on the sorted set.
	Roles []string
	// Application is the session's application_name.
	Application string
	// Columns are the base columns the statement touched.
	Columns []ColumnUse
	// Rows is the number of rows returned (or affected).
	Rows int64
	// OK is false when the statement failed or was refused.
	OK bool
}

// Key identifies one counter: an hour, a session identity and a column
// seen with one treatment.
type Key struct {
	// Hour is the start of the UTC hour the statements ran in.
	Hour     time.Time
	Database string
	User     string
	// Roles is the session's role set, sorted and joined by ",".
	Roles       string
	Application string
	Schema      string
	Table       string
	Column      string
	Treatment   Treatment
}

// RoleList splits Roles back into role names.
func (k Key) RoleList() []string {
	if k.Roles == "" {
		return nil
	}
	return strings.Split(k.Roles, ",")
}

// ColumnName returns schema.table.column.
func (k Key) ColumnName() string { return k.Schema + "." + k.Table + "." + k.Column }

// Counts are the counters kept per Key.
type Counts struct {
	// Statements touched the column.
	Statements int64
	// Reads are statements that read the column (any clause but
	// WriteTarget).
	Reads int64
	// Output, Filter, Join, GroupOrder, AggregateArg and WriteTarget
	// count statements that used the column in that clause kind.
	Output, Filter, Join, GroupOrder, AggregateArg, WriteTarget int64
	// OK and Failed split Statements by outcome.
	OK, Failed int64
	// Rows sums the rows returned by statements that output the column.
	Rows int64
	// LastSeen is the time of the latest statement; LastRead that of the
	// latest statement that read the column (zero if none did).
	LastSeen, LastRead time.Time
}

// Add adds o to c; times take the later one.
func (c *Counts) Add(o *Counts) {
	c.Statements += o.Statements
	c.Reads += o.Reads
	c.Output += o.Output
	c.Filter += o.Filter
	c.Join += o.Join
	c.GroupOrder += o.GroupOrder
	c.AggregateArg += o.AggregateArg
	c.WriteTarget += o.WriteTarget
	c.OK += o.OK
	c.Failed += o.Failed
	c.Rows += o.Rows
	if o.LastSeen.After(c.LastSeen) {
		c.LastSeen = o.LastSeen
	}
	if o.LastRead.After(c.LastRead) {
		c.LastRead = o.LastRead
	}
}

// Row is one Key with its Counts: a delta for Store.Add, or a stored total
// from Store.Query.
type Row struct {
	Key
	Counts
}
