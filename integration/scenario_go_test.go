package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/lib/pq"
)

// transcript collects the deterministic lines of a scenario run.
type transcript struct{ b strings.Builder }

func (t *transcript) add(step string, format string, args ...any) {
	fmt.Fprintf(&t.b, "%s: %s\n", step, fmt.Sprintf(format, args...))
}

// typesTable is created by every Go scenario.
const typesTable = `CREATE TEMP TABLE types (
	id int PRIMARY KEY, i2 smallint, i4 int, i8 bigint, num numeric(20,6), f4 real, f8 double precision,
	t text, vc varchar(20), ch char(3), b bool, d date, ts timestamp, tstz timestamptz, iv interval,
	u uuid, j json, jb jsonb, by bytea, ai int[], at text[], ip inet)`

const typesInsert = `INSERT INTO types VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22)`

// typesRows are inserted with bound parameters (in text form so every
// driver sends the same values).
var typesRows = [][]any{
	{1, "-32768", "2147483647", "-9223372036854775808", "12345678901234.123456", "3.5", "-2.25", "Zoë ✓", "", "abc", "true", "2024-02-29", "2024-02-29 13:14:15.123456", "2024-02-29 13:14:15.123456+02", "1 year 2 mons 3 days 04:05:06", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", `{"a": [1, 2]}`, `{"b": {"c": null}}`, "\\x00ff0010", "{1,2,NULL}", `{"x","y z",NULL}`, "192.168.0.1/24"},
	{2, "0", "0", "0", "0", "0", "0", "line\nbreak\ttab", "v", "x", "false", "1970-01-01", "1970-01-01 00:00:00", "1970-01-01 00:00:00+00", "0", "00000000-0000-0000-0000-000000000000", "[]", "[]", "\\x", "{}", "{}", "::1"},
	{3, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil},
}

func sha(b []byte) string { return fmt.Sprintf("%x", sha256.Sum256(b)) }

// pgxScenario runs the client scenario with pgx in the given query mode and
// returns its transcript.
func pgxScenario(ctx context.Context, dsn string, mode pgx.QueryExecMode) (string, error) {
	var tr transcript
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return "", err
	}
	cfg.DefaultQueryExecMode = mode
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "SET TimeZone = 'UTC'"); err != nil {
		return "", err
	}

	// types: every value in the server's text form and in pgx's own
	// decoding (binary format where the mode uses it).
	if _, err := conn.Exec(ctx, typesTable); err != nil {
		return "", err
	}
	for _, row := range typesRows {
		if _, err := conn.Exec(ctx, typesInsert, row...); err != nil {
			return "", fmt.Errorf("insert: %w", err)
		}
	}
	rows, err := conn.Query(ctx, "SELECT * FROM types ORDER BY id")
	if err != nil {
		return "", err
	}
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			return "", err
		}
		tr.add("types", "%#v", vals)
	}
	if err := rows.Err(); err != nil {
		return "", err
	}
	var text string
	if err := conn.QueryRow(ctx, "SELECT string_agg(types::text, ';' ORDER BY id) FROM types").Scan(&text); err != nil {
		return "", err
	}
	tr.add("types", "text %s", text)

	// prepared
	if _, err := conn.Prepare(ctx, "add", "SELECT $1::int + $2::int, $3::text || '!'"); err != nil {
		return "", err
	}
	for i := range 5 {
		var n int
		var s string
		if err := conn.QueryRow(ctx, "add", i, i*10, fmt.Sprint("p", i)).Scan(&n, &s); err != nil {
			return "", err
		}
		tr.add("prepared", "%d %s", n, s)
	}

	// tx
	mustExec := func(sql string, args ...any) error { _, err := conn.Exec(ctx, sql, args...); return err }
	count := func() (n int) { _ = conn.QueryRow(ctx, "SELECT count(*) FROM types").Scan(&n); return }
	for _, step := range []func() error{
		func() error { return mustExec("BEGIN") },
		func() error { return mustExec("INSERT INTO types (id) VALUES (10)") },
		func() error { return mustExec("ROLLBACK") },
	} {
		if err := step(); err != nil {
			return "", err
		}
	}
	tr.add("tx", "after rollback %d", count())
	tx, err := conn.Begin(ctx)
	if err != nil {
		return "", err
	}
	if _, err := tx.Exec(ctx, "INSERT INTO types (id) VALUES (11)"); err != nil {
		return "", err
	}
	if _, err := tx.Exec(ctx, "SAVEPOINT sp"); err != nil {
		return "", err
	}
	if _, err := tx.Exec(ctx, "INSERT INTO types (id) VALUES (12)"); err != nil {
		return "", err
	}
	if _, err := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT sp"); err != nil {
		return "", err
	}
	if err := tx.Commit(ctx); err != nil {
		return "", err
	}
	tr.add("tx", "after commit %d", count())

	// errors
	code := func(err error) string {
		var pe *pgconn.PgError
		if errors.As(err, &pe) {
			return pe.Code
		}
		return fmt.Sprint("not a server error: ", err)
	}
	var one int
	tr.add("errors", "div %s", code(conn.QueryRow(ctx, "SELECT 1/0").Scan(&one)))
	tr.add("errors", "syntax %s", code(mustExec("SELEC 1")))
	tr.add("errors", "unique %s", code(mustExec("INSERT INTO types (id) VALUES (1)")))
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		return "", err
	}
	tr.add("errors", "still usable %d", one)
	tx, err = conn.Begin(ctx)
	if err != nil {
		return "", err
	}
	_, e1 := tx.Exec(ctx, "SELECT 1/0")
	_, e2 := tx.Exec(ctx, "SELECT 1")
	tr.add("errors", "in tx %s then %s", code(e1), code(e2))
	if err := tx.Rollback(ctx); err != nil {
		return "", err
	}

	// copy: in with CopyFrom (binary COPY), in as text and CSV, out as text, CSV and binary.
	if err := mustExec("CREATE TEMP TABLE c (id int, name text, at timestamptz)"); err != nil {
		return "", err
	}
	src := make([][]any, 1000)
	for i := range src {
		src[i] = []any{i, fmt.Sprintf("name %d ✓", i), time.Date(2024, 1, 1, 0, 0, i, 0, time.UTC)}
	}
	n, err := conn.CopyFrom(ctx, pgx.Identifier{"c"}, []string{"id", "name", "at"}, pgx.CopyFromRows(src))
	if err != nil {
		return "", fmt.Errorf("copy from: %w", err)
	}
	tr.add("copy", "binary in %d", n)
	var textIn, csvIn bytes.Buffer
	for i := 1000; i < 2000; i++ {
		fmt.Fprintf(&textIn, "%d\tt%d\t2024-01-02 00:00:00+00\n", i, i)
		fmt.Fprintf(&csvIn, "%d,\"c,%d\",2024-01-03 00:00:00+00\n", i+1000, i)
	}
	ct, err := conn.PgConn().CopyFrom(ctx, &textIn, "COPY c FROM STDIN")
	if err != nil {
		return "", err
	}
	tr.add("copy", "text in %d", ct.RowsAffected())
	ct, err = conn.PgConn().CopyFrom(ctx, &csvIn, "COPY c FROM STDIN (FORMAT csv)")
	if err != nil {
		return "", err
	}
	tr.add("copy", "csv in %d", ct.RowsAffected())
	for _, f := range []string{"text", "csv", "binary"} {
		var out bytes.Buffer
		ct, err := conn.PgConn().CopyTo(ctx, &out, "COPY (SELECT * FROM c ORDER BY id) TO STDOUT (FORMAT "+f+")")
		if err != nil {
			return "", err
		}
		tr.add("copy", "%s out %d %s", f, ct.RowsAffected(), sha(out.Bytes()))
	}
	// A COPY that fails midway leaves the session usable.
	_, err = conn.PgConn().CopyFrom(ctx, strings.NewReader("1\tx\tnot a time\n"), "COPY c FROM STDIN")
	tr.add("copy", "bad row %s", code(err))

	// notify
	if err := mustExec("LISTEN chan_pgx"); err != nil {
		return "", err
	}
	other, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return "", err
	}
	if _, err := other.Exec(ctx, "NOTIFY chan_pgx, 'payload-1'"); err != nil {
		return "", err
	}
	if _, err := other.Exec(ctx, "SELECT pg_notify('chan_pgx', 'payload-2')"); err != nil {
		return "", err
	}
	otherPID := other.PgConn().PID()
	other.Close(ctx)
	for range 2 {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		nt, err := conn.WaitForNotification(wctx)
		cancel()
		if err != nil {
			return "", fmt.Errorf("notification: %w", err)
		}
		tr.add("notify", "%s %s from-other=%v", nt.Channel, nt.Payload, nt.PID == otherPID)
	}

	// cancel: a context deadline makes pgx send a CancelRequest.
	cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	start := time.Now()
	_, err = conn.Exec(cctx, "SELECT pg_sleep(30)")
	cancel()
	tr.add("cancel", "error %v within 10s %v", err != nil, time.Since(start) < 10*time.Second)
	// pgx closes the connection after a cancelled query; reconnect.
	conn.Close(ctx)
	if conn, err = pgx.ConnectConfig(ctx, cfg); err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	// Cancel without closing: pgconn's CancelRequest.
	done := make(chan error, 1)
	go func() { _, err := conn.Exec(ctx, "SELECT pg_sleep(30)"); done <- err }()
	time.Sleep(300 * time.Millisecond)
	if err := conn.PgConn().CancelRequest(ctx); err != nil {
		return "", fmt.Errorf("cancel request: %w", err)
	}
	select {
	case err := <-done:
		tr.add("cancel", "sqlstate %s", code(err))
	case <-time.After(10 * time.Second):
		return "", errors.New("cancel did not stop pg_sleep")
	}
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		return "", err
	}
	tr.add("cancel", "still usable %d", one)

	// bigresult
	rows, err = conn.Query(ctx, "SELECT g, md5(g::text) FROM generate_series(1,1000000) g")
	if err != nil {
		return "", err
	}
	h := sha256.New()
	var cnt, sum int64
	for rows.Next() {
		var g int64
		var m string
		if err := rows.Scan(&g, &m); err != nil {
			return "", err
		}
		cnt++
		sum += g
		h.Write([]byte(m))
	}
	if err := rows.Err(); err != nil {
		return "", err
	}
	tr.add("bigresult", "%d rows sum %d %x", cnt, sum, h.Sum(nil))

	// bigvalue: 64 MiB each way.
	var big string
	if err := conn.QueryRow(ctx, "SELECT repeat('x', 64*1024*1024)").Scan(&big); err != nil {
		return "", err
	}
	tr.add("bigvalue", "out %d %s", len(big), sha([]byte(big)))
	var l int
	var m string
	if err := conn.QueryRow(ctx, "SELECT length($1::text), md5($1::text)", strings.Repeat("y", 64<<20)).Scan(&l, &m); err != nil {
		return "", err
	}
	tr.add("bigvalue", "in %d %s", l, m)
	return tr.b.String(), nil
}

// libpqScenario runs the scenario's portable steps with lib/pq through
// database/sql (text format, extended protocol).
func libpqScenario(ctx context.Context, dsn string) (string, error) {
	var tr transcript
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		return "", fmt.Errorf("lib/pq step 1: %w", err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	conn, err := db.Conn(ctx)
	if err != nil {
		return "", fmt.Errorf("lib/pq step 2: %w", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "SET TimeZone = 'UTC'"); err != nil {
		return "", fmt.Errorf("lib/pq step 3: %w", err)
	}
	if _, err := conn.ExecContext(ctx, typesTable); err != nil {
		return "", fmt.Errorf("lib/pq step 4: %w", err)
	}
	for _, row := range typesRows {
		if _, err := conn.ExecContext(ctx, typesInsert, row...); err != nil {
			return "", fmt.Errorf("insert: %w", err)
		}
	}
	rows, err := conn.QueryContext(ctx, "SELECT * FROM types ORDER BY id")
	if err != nil {
		return "", fmt.Errorf("lib/pq step 5: %w", err)
	}
	cols, _ := rows.Columns()
	for rows.Next() {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return "", fmt.Errorf("lib/pq step 6: %w", err)
		}
		tr.add("types", "%v", vals)
	}
	rows.Close()

	stmt, err := conn.PrepareContext(ctx, "SELECT $1::int * 2, $2::text")
	if err != nil {
		return "", fmt.Errorf("lib/pq step 7: %w", err)
	}
	for i := range 5 {
		var n int
		var s string
		if err := stmt.QueryRowContext(ctx, i, fmt.Sprint("q", i)).Scan(&n, &s); err != nil {
			return "", fmt.Errorf("lib/pq step 8: %w", err)
		}
		tr.add("prepared", "%d %s", n, s)
	}
	stmt.Close()

	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return "", fmt.Errorf("lib/pq step 9: %w", err)
	}
	_, _ = tx.ExecContext(ctx, "INSERT INTO types (id) VALUES (20)")
	_ = tx.Rollback()
	var cnt int
	_ = conn.QueryRowContext(ctx, "SELECT count(*) FROM types").Scan(&cnt)
	tr.add("tx", "after rollback %d", cnt)

	code := func(err error) string {
		var pe *pq.Error
		if errors.As(err, &pe) {
			return string(pe.Code)
		}
		return fmt.Sprint("not a server error: ", err)
	}
	var one int
	tr.add("errors", "div %s", code(conn.QueryRowContext(ctx, "SELECT 1/0").Scan(&one)))
	_, err = conn.ExecContext(ctx, "SELEC 1")
	tr.add("errors", "syntax %s", code(err))

	// COPY FROM STDIN via pq.CopyIn.
	if _, err := conn.ExecContext(ctx, "CREATE TEMP TABLE c (id int, name text)"); err != nil {
		return "", fmt.Errorf("lib/pq step 10: %w", err)
	}
	tx, err = conn.BeginTx(ctx, nil)
	if err != nil {
		return "", fmt.Errorf("lib/pq step 11: %w", err)
	}
	cs, err := tx.PrepareContext(ctx, pq.CopyIn("c", "id", "name"))
	if err != nil {
		return "", fmt.Errorf("lib/pq step 12: %w", err)
	}
	for i := range 1000 {
		if _, err := cs.ExecContext(ctx, i, fmt.Sprint("n", i)); err != nil {
			return "", fmt.Errorf("lib/pq step 13: %w", err)
		}
	}
	if _, err := cs.ExecContext(ctx); err != nil {
		return "", fmt.Errorf("lib/pq step 14: %w", err)
	}
	cs.Close()
	if err := tx.Commit(); err != nil {
		return "", fmt.Errorf("lib/pq step 15: %w", err)
	}
	var sum int
	_ = conn.QueryRowContext(ctx, "SELECT count(*), sum(id) FROM c").Scan(&cnt, &sum)
	tr.add("copy", "in %d sum %d", cnt, sum)

	// cancel: lib/pq cancels on context expiry.
	cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err = conn.ExecContext(cctx, "SELECT pg_sleep(30)")
	cancel()
	tr.add("cancel", "sqlstate %s", code(err))
	// database/sql retires a connection whose query was cancelled.
	conn.Close()
	if conn, err = db.Conn(ctx); err != nil {
		return "", fmt.Errorf("lib/pq reconnect: %w", err)
	}
	defer conn.Close()
	if err := conn.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
		return "", fmt.Errorf("lib/pq step 16: %w", err)
	}
	tr.add("cancel", "still usable %d", one)

	// bigresult and bigvalue
	rows, err = conn.QueryContext(ctx, "SELECT g, md5(g::text) FROM generate_series(1,1000000) g")
	if err != nil {
		return "", fmt.Errorf("lib/pq step 17: %w", err)
	}
	h := sha256.New()
	var n, total int64
	for rows.Next() {
		var g int64
		var m string
		if err := rows.Scan(&g, &m); err != nil {
			return "", fmt.Errorf("lib/pq step 18: %w", err)
		}
		n++
		total += g
		h.Write([]byte(m))
	}
	if err := rows.Err(); err != nil {
		return "", fmt.Errorf("lib/pq step 19: %w", err)
	}
	tr.add("bigresult", "%d rows sum %d %x", n, total, h.Sum(nil))
	var big string
	if err := conn.QueryRowContext(ctx, "SELECT repeat('x', 64*1024*1024)").Scan(&big); err != nil {
		return "", fmt.Errorf("lib/pq step 20: %w", err)
	}
	tr.add("bigvalue", "out %d %s", len(big), sha([]byte(big)))
	var l int
	var m string
	if err := conn.QueryRowContext(ctx, "SELECT length($1::text), md5($1::text)", strings.Repeat("y", 64<<20)).Scan(&l, &m); err != nil {
		return "", fmt.Errorf("lib/pq step 21: %w", err)
	}
	tr.add("bigvalue", "in %d %s", l, m)
	return tr.b.String(), nil
}

// differential runs a scenario direct and through the proxy and requires
// equal transcripts that contain every expected line fragment.
func differential(t *testing.T, run func(ctx context.Context, tg target) (string, error), expect ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	want, err := run(ctx, direct())
	if err != nil {
		t.Fatalf("direct: %v", err)
	}
	got, err := run(ctx, via(w.viaTLS))
	if err != nil {
		t.Fatalf("through the proxy: %v", err)
	}
	for _, s := range expect {
		if !strings.Contains(want, s) {
			t.Fatalf("direct transcript lacks %q:\n%s", s, want)
		}
	}
	if got != want {
		t.Fatalf("results differ through the proxy\n--- direct\n%s\n--- proxy\n%s", want, got)
	}
}

func TestPGXDifferential(t *testing.T) {
	for _, m := range []struct {
		name string
		mode pgx.QueryExecMode
	}{
		{"extended-binary-cached", pgx.QueryExecModeCacheStatement},
		{"extended-describe", pgx.QueryExecModeDescribeExec},
		{"simple-text", pgx.QueryExecModeSimpleProtocol},
	} {
		t.Run(m.name, func(t *testing.T) {
			differential(t, func(ctx context.Context, tg target) (string, error) {
				return pgxScenario(ctx, tg.dsn("scram_user", scramPassword, "app", "require", "channel_binding=disable"), m.mode)
			}, goExpect...)
		})
	}
}

func TestLibpqDifferential(t *testing.T) {
	differential(t, func(ctx context.Context, tg target) (string, error) {
		return libpqScenario(ctx, tg.dsn("md5_user", md5Password, "app", "require"))
	}, "types: [{1 true}", "prepared: 8 q4", "tx: after rollback 3", "errors: div 22012", "errors: syntax 42601",
		"copy: in 1000 sum 499500", "cancel: sqlstate 57014", "cancel: still usable 1", bigResultLine, "bigvalue: out 67108864", "bigvalue: in 67108864")
}

// bigResultLine is the expected summary of the 1,000,000-row result.
const bigResultLine = "bigresult: 1000000 rows sum 500000500000"

// goExpect are fragments every pgx transcript must contain.
var goExpect = []string{
	"types: []interface {}{1, -32768", "types: text (1,-32768,", "prepared: 44 p4!", "tx: after rollback 3", "tx: after commit 4",
	"errors: div 22012", "errors: syntax 42601", "errors: unique 23505", "errors: in tx 22012 then 25P02",
	"copy: binary in 1000", "copy: text in 1000", "copy: csv in 1000", "copy: bad row 22007",
	"notify: chan_pgx payload-1 from-other=true", "notify: chan_pgx payload-2 from-other=true",
	"cancel: error true within 10s true", "cancel: sqlstate 57014", "cancel: still usable 1",
	bigResultLine, "bigvalue: out 67108864", "bigvalue: in 67108864",
}
