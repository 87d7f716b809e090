// Package audit owns pgveil's audit log: an append-only file of JSON lines,
// one per statement, each line carrying the SHA-256 of the line before it
// (and, with a key, an HMAC-SHA-256 of itself), so that an edited, deleted,
// inserted or reordered line is detected by Verify.
//
// The Writer takes records from the proxy's sessions without ever blocking
// them (unless the operator chose OnFullBlock), writes them from a single
// goroutine with buffered writes, rotates the file by size while the chain
// continues across files, records every loss as a gap marker line, and
// seals a torn last line (a crash mid-write) with a torn marker on restart.
// Verify walks one log and its rotated predecessors and reports the first
// broken line as FILE:LINE: reason.
//
// The exact bytes that are hashed are described in docs/audit.md.
package audit

import (
	"fmt"
	"time"
)

// Treatment is how a statement's result exposed one column.
type Treatment string

// Treatments of a column, as the rewrite planned them.
const (
	TreatmentRaw       Treatment = "raw"
	TreatmentMasked    Treatment = "masked"
	TreatmentDecrypted Treatment = "decrypted"
	TreatmentRefused   Treatment = "refused"
)

// Outcome is how a statement ended.
type Outcome string

// Outcomes of a statement. OutcomeError goes with Record.SQLState,
// OutcomeRefused with Record.Rule.
const (
	OutcomeOK      Outcome = "ok"
	OutcomeError   Outcome = "error"
	OutcomeRefused Outcome = "refused"
)

// Kind says what a line of the log is.
type Kind string

// Kinds of line. A statement line is a Record; the two markers are written
// by the Writer itself so that a loss is visible in the log.
const (
	// KindStatement is one statement a session ran.
	KindStatement Kind = "statement"
	// KindGap records that Line.Lost records were lost before this point
	// (queue full, a write error, or a close that timed out).
	KindGap Kind = "gap"
	// KindTorn records that a restarted Writer found an incomplete last
	// line (a crash mid-write) and truncated Line.TornBytes bytes.
	KindTorn Kind = "torn"
)

// Column is one column a statement touched and how.
type Column struct {
	// Table is the qualified relation, "schema.table".
	Table string `json:"table"`
	// Column is the column name.
	Column string `json:"column"`
	// Treatment is how the column reached the client.
	Treatment Treatment `json:"treatment"`
	// Clauses lists where the statement used the column ("select",
	// "where", "join", "group by", ...), as the caller names them; nil
	// is written as [].
	Clauses []string `json:"clauses"`
}

// Record is one statement, as the proxy hands it to Writer.Write. It never
// holds a parameter or a row value: SQL is normalised by the caller (every
// literal replaced by a placeholder) before it gets here.
type Record struct {
	// Time is when the statement started; the zero value means "now" and
	// is filled in by Write. It is written in UTC with microseconds.
	Time time.Time
	// Session identifies the client session.
	Session string
	// User is the login user.
	User string
	// Roles are the roles the policy was evaluated for.
	Roles []string
	// Client is the client's address, "host:port".
	Client string
	// Database is the database the session is connected to.
	Database string
	// Application is the session's application_name.
	Application string
	// Fingerprint identifies the statement's shape, computed by the caller.
	Fingerprint string
	// SQL is the normalised statement text (no literals).
	SQL string
	// Columns are the classified columns the statement touched.
	Columns []Column
	// Rows is the number of rows returned or affected.
	Rows int64
	// Duration is how long the statement took; written in microseconds.
	Duration time.Duration
	// Outcome is how the statement ended.
	Outcome Outcome
	// SQLState is the error's SQLSTATE when Outcome is OutcomeError.
	SQLState string
	// Rule names the policy rule when Outcome is OutcomeRefused.
	Rule string
}

// Statement is one statement in the form WriteStatement takes: the
// members that are the same for a whole session or a whole statement
// shape come encoded (NewSession, NewShape), so that writing a line costs
// no encoding of them. Like a Record it never holds a parameter or a row
// value.
type Statement struct {
	// Time is when the statement started; the zero value means "now".
	Time time.Time
	// Session holds the session members; nil writes them empty.
	Session *Session
	// Shape holds the fingerprint, the normalised SQL and the columns;
	// nil writes them empty.
	Shape *Shape
	// Rows, Duration, Outcome, SQLState and Rule are as in Record.
	Rows     int64
	Duration time.Duration
	Outcome  Outcome
	SQLState string
	Rule     string
}

// Line is one decoded line of the log: a statement or a marker, plus the
// chain fields. Verify decodes lines into it; so can any reader.
type Line struct {
	Seq         uint64    `json:"seq"`
	Time        time.Time `json:"time"`
	Kind        Kind      `json:"kind"`
	Session     string    `json:"session,omitempty"`
	User        string    `json:"user,omitempty"`
	Roles       []string  `json:"roles,omitempty"`
	Client      string    `json:"client,omitempty"`
	Database    string    `json:"database,omitempty"`
	Application string    `json:"application,omitempty"`
	Fingerprint string    `json:"fingerprint,omitempty"`
	SQL         string    `json:"sql,omitempty"`
	Columns     []Column  `json:"columns,omitempty"`
	Rows        int64     `json:"rows,omitempty"`
	DurationUS  int64     `json:"duration_us,omitempty"`
	Outcome     Outcome   `json:"outcome,omitempty"`
	SQLState    string    `json:"sqlstate,omitempty"`
	Rule        string    `json:"rule,omitempty"`
	Lost        int64     `json:"lost,omitempty"`
	Reason      string    `json:"reason,omitempty"`
	TornBytes   int64     `json:"torn_bytes,omitempty"`
	Prev        string    `json:"prev"`
	HMAC        string    `json:"hmac,omitempty"`
}

// Genesis is the prev value of the first line of a new log: 64 zeros, the
// hex form of an all-zero SHA-256.
const Genesis = "0000000000000000000000000000000000000000000000000000000000000000"

// OnFull is what Write does when the queue is full, and what the writer
// does when the disk refuses a write.
type OnFull int

// Policies for a full queue or a failing disk.
const (
	// OnFullDrop (the default) drops the record, counts it, and writes a
	// gap marker with the count once the log can be written again. A
	// session is never stalled by its audit log.
	OnFullDrop OnFull = iota
	// OnFullBlock makes Write wait for room in the queue, and the writer
	// retry a failed write until it succeeds or Close gives up: sessions
	// stall rather than run unaudited (fail closed).
	OnFullBlock
)

// String returns "drop" or "block".
func (p OnFull) String() string {
	switch p {
	case OnFullDrop:
		return "drop"
	case OnFullBlock:
		return "block"
	}
	return fmt.Sprintf("OnFull(%d)", int(p))
}

// Set parses "drop" or "block"; with String and Type it makes *OnFull a
// pflag.Value.
func (p *OnFull) Set(s string) error {
	switch s {
	case "drop":
		*p = OnFullDrop
	case "block":
		*p = OnFullBlock
	default:
		return fmt.Errorf("audit: on-full policy %q: want drop or block", s)
	}
	return nil
}

// Type names the value for flag usage text.
func (p *OnFull) Type() string { return "drop|block" }
