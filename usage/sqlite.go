package usage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"time"

	_ "modernc.org/sqlite" // Registers the pure-Go "sqlite" driver.
)

// sqliteBusyTimeoutMS is how long a writer waits for another process's
// lock (SQLite PRAGMA busy_timeout, in milliseconds).
const sqliteBusyTimeoutMS = 10000

// sqliteSchema is the layout of SchemaVersion 1. Times are Unix
// microseconds (0 for none), hours Unix seconds.
const sqliteSchema = `
CREATE TABLE IF NOT EXISTS column_usage (
	hour          INTEGER NOT NULL,
	database      TEXT    NOT NULL,
	username      TEXT    NOT NULL,
	roles         TEXT    NOT NULL,
	application   TEXT    NOT NULL,
	schema_name   TEXT    NOT NULL,
	table_name    TEXT    NOT NULL,
	column_name   TEXT    NOT NULL,
	treatment     TEXT    NOT NULL,
	statements    INTEGER NOT NULL,
	reads         INTEGER NOT NULL,
	output        INTEGER NOT NULL,
	filter        INTEGER NOT NULL,
	join_key      INTEGER NOT NULL,
	group_order   INTEGER NOT NULL,
	aggregate_arg INTEGER NOT NULL,
	write_target  INTEGER NOT NULL,
	ok            INTEGER NOT NULL,
	failed        INTEGER NOT NULL,
	rows_returned INTEGER NOT NULL,
	last_seen     INTEGER NOT NULL,
	last_read     INTEGER NOT NULL,
	PRIMARY KEY (hour, database, username, roles, application, schema_name, table_name, column_name, treatment)
)`

// usageColumns lists column_usage's columns in Row order; both stores use
// the same names.
const usageColumns = `hour, database, username, roles, application, schema_name, table_name, column_name, treatment,
	statements, reads, output, filter, join_key, group_order, aggregate_arg, write_target, ok, failed, rows_returned,
	last_seen, last_read`

// usageConflict is the upsert's conflict target and additive update; max
// is spelled per dialect.
func usageConflict(greatest string) string {
	return `ON CONFLICT (hour, database, username, roles, application, schema_name, table_name, column_name, treatment)
DO UPDATE SET
	statements = column_usage.statements + excluded.statements,
	reads = column_usage.reads + excluded.reads,
	output = column_usage.output + excluded.output,
	filter = column_usage.filter + excluded.filter,
	join_key = column_usage.join_key + excluded.join_key,
	group_order = column_usage.group_order + excluded.group_order,
	aggregate_arg = column_usage.aggregate_arg + excluded.aggregate_arg,
	write_target = column_usage.write_target + excluded.write_target,
	ok = column_usage.ok + excluded.ok,
	failed = column_usage.failed + excluded.failed,
	rows_returned = column_usage.rows_returned + excluded.rows_returned,
	last_seen = ` + greatest + `(column_usage.last_seen, excluded.last_seen),
	last_read = ` + greatest + `(column_usage.last_read, excluded.last_read)`
}

// SQLiteStore is a Store in a local SQLite file (WAL mode), for a single
// proxy or a few on one host.
type SQLiteStore struct {
	db   *sql.DB
	path string
}

// OpenSQLite opens or creates the SQLite store at path, in WAL mode, and
// creates or checks its schema.
func OpenSQLite(ctx context.Context, path string) (*SQLiteStore, error) {
	if path == "" {
		return nil, errors.New("usage: sqlite store: empty path")
	}
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", sqliteBusyTimeoutMS))
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Add("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("usage: sqlite store %s: %w", path, err)
	}
	// One connection: writes are serialised by SQLite anyway, and this
	// keeps the pragmas on the connection that is used.
	db.SetMaxOpenConns(1)
	s := &SQLiteStore{db: db, path: path}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

func (s *SQLiteStore) migrate(ctx context.Context) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("usage: sqlite store %s: %w", s.path, err)
	}
	defer tx.Rollback()
	var v int
	if err := tx.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&v); err != nil {
		return fmt.Errorf("usage: sqlite store %s: read version: %w", s.path, err)
	}
	switch {
	case v > SchemaVersion:
		return fmt.Errorf("usage: sqlite store %s: version %d: %w (%d)", s.path, v, ErrNewerSchema, SchemaVersion)
	case v == SchemaVersion:
		return nil
	}
	if _, err := tx.ExecContext(ctx, sqliteSchema); err != nil {
		return fmt.Errorf("usage: sqlite store %s: create schema: %w", s.path, err)
	}
	if _, err := tx.ExecContext(ctx, fmt.Sprintf(`PRAGMA user_version = %d`, SchemaVersion)); err != nil {
		return fmt.Errorf("usage: sqlite store %s: set version: %w", s.path, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("usage: sqlite store %s: create schema: %w", s.path, err)
	}
	return nil
}

// Add upserts deltas in one transaction.
func (s *SQLiteStore) Add(ctx context.Context, deltas []Row) error {
	if len(deltas) == 0 {
		return nil
	}
	deltas = mergeRows(deltas)
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("usage: sqlite store: begin: %w", err)
	}
	defer tx.Rollback()
	stmt, err := tx.PrepareContext(ctx, `INSERT INTO column_usage (`+usageColumns+`)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
`+usageConflict("max"))
	if err != nil {
		return fmt.Errorf("usage: sqlite store: prepare: %w", err)
	}
	defer stmt.Close()
	for i := range deltas {
		r := &deltas[i]
		if _, err := stmt.ExecContext(ctx, hourOf(r.Hour).Unix(), r.Database, r.User, r.Roles, r.Application,
			r.Schema, r.Table, r.Column, r.Treatment.String(),
			r.Statements, r.Reads, r.Output, r.Filter, r.Join, r.GroupOrder, r.AggregateArg, r.WriteTarget,
			r.OK, r.Failed, r.Rows, micros(r.LastSeen), micros(r.LastRead)); err != nil {
			return fmt.Errorf("usage: sqlite store: upsert: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("usage: sqlite store: commit: %w", err)
	}
	return nil
}

// Query returns the rows from the hour holding since on.
func (s *SQLiteStore) Query(ctx context.Context, since time.Time) ([]Row, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+usageColumns+` FROM column_usage WHERE hour >= ?
ORDER BY hour, database, username, roles, application, schema_name, table_name, column_name, treatment`,
		hourOf(since).Unix())
	if err != nil {
		return nil, fmt.Errorf("usage: sqlite store: query: %w", err)
	}
	defer rows.Close()
	var out []Row
	for rows.Next() {
		var r Row
		var hour, seen, read int64
		var treatment string
		if err := rows.Scan(&hour, &r.Database, &r.User, &r.Roles, &r.Application,
			&r.Schema, &r.Table, &r.Column, &treatment,
			&r.Statements, &r.Reads, &r.Output, &r.Filter, &r.Join, &r.GroupOrder, &r.AggregateArg, &r.WriteTarget,
			&r.OK, &r.Failed, &r.Rows, &seen, &read); err != nil {
			return nil, fmt.Errorf("usage: sqlite store: query: %w", err)
		}
		if r.Treatment, err = ParseTreatment(treatment); err != nil {
			return nil, fmt.Errorf("usage: sqlite store: %w", err)
		}
		r.Hour = time.Unix(hour, 0).UTC()
		r.LastSeen, r.LastRead = fromMicros(seen), fromMicros(read)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("usage: sqlite store: query: %w", err)
	}
	SortRows(out)
	return out, nil
}

// Close closes the database.
func (s *SQLiteStore) Close() error { return s.db.Close() }
