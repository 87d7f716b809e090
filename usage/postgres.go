package usage

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

// pgSchemaLock is the pg_advisory_xact_lock key that serialises schema
// creation among proxies opening the store at once (CREATE ... IF NOT
// EXISTS is not safe against concurrent creators).
const pgSchemaLock = 0x70677665696c // "pgveil"

// pgAddAttempts is how often Add tries a transaction that lost a deadlock
// or serialization race (SQLSTATE 40P01, 40001) before giving up.
const pgAddAttempts = 3

// pgMaxConns is the store's pool size: flushes are serial per ledger.
const pgMaxConns = 2

// pgSchema is the layout of SchemaVersion 1, in schema pgveil.
const pgSchema = `
CREATE SCHEMA IF NOT EXISTS pgveil;
CREATE TABLE IF NOT EXISTS pgveil.usage_schema (version integer NOT NULL);
CREATE TABLE IF NOT EXISTS pgveil.column_usage (
	hour          timestamptz NOT NULL,
	database      text        NOT NULL,
	username      text        NOT NULL,
	roles         text        NOT NULL,
	application   text        NOT NULL,
	schema_name   text        NOT NULL,
	table_name    text        NOT NULL,
	column_name   text        NOT NULL,
	treatment     text        NOT NULL,
	statements    bigint      NOT NULL,
	reads         bigint      NOT NULL,
	output        bigint      NOT NULL,
	filter        bigint      NOT NULL,
	join_key      bigint      NOT NULL,
	group_order   bigint      NOT NULL,
	aggregate_arg bigint      NOT NULL,
	write_target  bigint      NOT NULL,
	ok            bigint      NOT NULL,
	failed        bigint      NOT NULL,
	rows_returned bigint      NOT NULL,
	last_seen     timestamptz,
	last_read     timestamptz,
	PRIMARY KEY (hour, database, username, roles, application, schema_name, table_name, column_name, treatment)
)`

// PostgresStore is a Store in table pgveil.column_usage of a PostgreSQL
// database, which many proxies may share: each flush is one transaction of
// additive upserts.
type PostgresStore struct {
	pool *pgxpool.Pool
}

// OpenPostgres connects to the database at connString, creates schema
// pgveil and its tables if missing, and checks their version.
func OpenPostgres(ctx context.Context, connString string) (*PostgresStore, error) {
	cfg, err := pgxpool.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("usage: postgres store: invalid connection string: %w", err)
	}
	cfg.MaxConns = pgMaxConns
	cfg.MinConns = 0
	if cfg.ConnConfig.RuntimeParams["application_name"] == "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = "pgveil usage"
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("usage: postgres store: %w", err)
	}
	s := &PostgresStore{pool: pool}
	if err := s.migrate(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return s, nil
}

func (s *PostgresStore) migrate(ctx context.Context) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(pgSchemaLock)); err != nil {
			return fmt.Errorf("usage: postgres store: lock schema: %w", err)
		}
		// Create only what is missing: CREATE SCHEMA IF NOT EXISTS checks
		// the CREATE privilege even when the schema exists, and a proxy or
		// a report may run with an account that only reads and writes the
		// table.
		var exists bool
		if err := tx.QueryRow(ctx, `SELECT to_regclass('pgveil.usage_schema') IS NOT NULL
			AND to_regclass('pgveil.column_usage') IS NOT NULL`).Scan(&exists); err != nil {
			return fmt.Errorf("usage: postgres store: look for schema pgveil: %w", err)
		}
		if !exists {
			if _, err := tx.Exec(ctx, pgSchema); err != nil {
				return fmt.Errorf("usage: postgres store: create schema pgveil: %w", err)
			}
		}
		var v *int
		if err := tx.QueryRow(ctx, `SELECT max(version) FROM pgveil.usage_schema`).Scan(&v); err != nil {
			return fmt.Errorf("usage: postgres store: read version: %w", err)
		}
		switch {
		case v == nil:
			if _, err := tx.Exec(ctx, `INSERT INTO pgveil.usage_schema (version) VALUES ($1)`, SchemaVersion); err != nil {
				return fmt.Errorf("usage: postgres store: set version: %w", err)
			}
		case *v > SchemaVersion:
			return fmt.Errorf("usage: postgres store: version %d: %w (%d)", *v, ErrNewerSchema, SchemaVersion)
		}
		return nil
	})
}

// pgUpsert inserts one array element per delta.
var pgUpsert = `INSERT INTO pgveil.column_usage AS column_usage (` + usageColumns + `)
SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
	$8::text[], $9::text[], $10::int8[], $11::int8[], $12::int8[], $13::int8[], $14::int8[], $15::int8[],
	$16::int8[], $17::int8[], $18::int8[], $19::int8[], $20::int8[], $21::timestamptz[], $22::timestamptz[])
` + usageConflict("GREATEST")

// Add upserts deltas in one transaction, sorted by key so that concurrent
// writers lock rows in the same order; a transaction that loses a
// deadlock anyway is retried.
func (s *PostgresStore) Add(ctx context.Context, deltas []Row) error {
	if len(deltas) == 0 {
		return nil
	}
	deltas = mergeRows(deltas)
	n := len(deltas)
	var (
		hours      = make([]time.Time, n)
		strs       [8][]string
		ints       [11][]int64
		seen, read = make([]pgtype.Timestamptz, n), make([]pgtype.Timestamptz, n)
	)
	for i := range strs {
		strs[i] = make([]string, n)
	}
	for i := range ints {
		ints[i] = make([]int64, n)
	}
	for i := range deltas {
		r := &deltas[i]
		hours[i] = hourOf(r.Hour)
		for j, v := range [8]string{r.Database, r.User, r.Roles, r.Application, r.Schema, r.Table, r.Column, r.Treatment.String()} {
			strs[j][i] = v
		}
		for j, v := range [11]int64{r.Statements, r.Reads, r.Output, r.Filter, r.Join, r.GroupOrder, r.AggregateArg,
			r.WriteTarget, r.OK, r.Failed, r.Rows} {
			ints[j][i] = v
		}
		seen[i] = pgtype.Timestamptz{Time: r.LastSeen, Valid: !r.LastSeen.IsZero()}
		read[i] = pgtype.Timestamptz{Time: r.LastRead, Valid: !r.LastRead.IsZero()}
	}
	args := []any{hours}
	for _, a := range strs {
		args = append(args, a)
	}
	for _, a := range ints {
		args = append(args, a)
	}
	args = append(args, seen, read)

	var err error
	for attempt := 1; attempt <= pgAddAttempts; attempt++ {
		err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, pgUpsert, args...)
			return err
		})
		var pe *pgconn.PgError
		if err == nil || !errors.As(err, &pe) || (pe.Code != "40P01" && pe.Code != "40001") {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("usage: postgres store: upsert %d rows: %w", n, err)
	}
	return nil
}

// Query returns the rows from the hour holding since on.
func (s *PostgresStore) Query(ctx context.Context, since time.Time) ([]Row, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+usageColumns+` FROM pgveil.column_usage WHERE hour >= $1`, hourOf(since))
	if err != nil {
		return nil, fmt.Errorf("usage: postgres store: query: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Row, error) {
		var r Row
		var treatment string
		var seen, read pgtype.Timestamptz
		if err := row.Scan(&r.Hour, &r.Database, &r.User, &r.Roles, &r.Application,
			&r.Schema, &r.Table, &r.Column, &treatment,
			&r.Statements, &r.Reads, &r.Output, &r.Filter, &r.Join, &r.GroupOrder, &r.AggregateArg, &r.WriteTarget,
			&r.OK, &r.Failed, &r.Rows, &seen, &read); err != nil {
			return r, err
		}
		var err error
		if r.Treatment, err = ParseTreatment(treatment); err != nil {
			return r, err
		}
		r.Hour = r.Hour.UTC()
		if seen.Valid {
			r.LastSeen = seen.Time.UTC()
		}
		if read.Valid {
			r.LastRead = read.Time.UTC()
		}
		return r, nil
	})
	if err != nil {
		return nil, fmt.Errorf("usage: postgres store: query: %w", err)
	}
	SortRows(out)
	return out, nil
}

// Close closes the connection pool.
func (s *PostgresStore) Close() error {
	s.pool.Close()
	return nil
}
