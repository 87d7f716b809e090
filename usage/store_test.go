package usage

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// storeKinds opens each kind of store for a test.
var storeKinds = []struct {
	name string
	open func(t *testing.T) (spec string)
}{
	{"sqlite", func(t *testing.T) string { return "sqlite:" + filepath.Join(t.TempDir(), "usage.db") }},
	{"postgres", testDatabase},
}

func openStore(t *testing.T, spec string) Store {
	t.Helper()
	s, err := Open(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func delta(hour time.Time, user, column string, tr Treatment, n int64, seen time.Time) Row {
	return Row{
		Key: Key{Hour: hour, Database: "app", User: user, Roles: user + ",analyst", Application: "bi",
			Schema: "public", Table: "customers", Column: column, Treatment: tr},
		Counts: Counts{Statements: n, Reads: n, Output: n, Filter: 2 * n, Join: 3 * n, GroupOrder: 4 * n,
			AggregateArg: 5 * n, WriteTarget: 6 * n, OK: n, Failed: 7 * n, Rows: 100 * n, LastSeen: seen, LastRead: seen},
	}
}

func TestStoresAddExactCounts(t *testing.T) {
	h1 := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	h2 := h1.Add(time.Hour)
	seen1 := h1.Add(12*time.Minute + 345678*time.Microsecond)
	seen2 := h1.Add(59 * time.Minute)
	for _, kind := range storeKinds {
		t.Run(kind.name, func(t *testing.T) {
			requirePostgresIf(t, kind.name)
			spec := kind.open(t)
			s := openStore(t, spec)
			ctx := context.Background()
			if err := s.Add(ctx, []Row{
				delta(h1, "ann", "email", Raw, 1, seen2),
				delta(h1, "ann", "email", Masked, 2, seen1),
				delta(h2, "bob", "email", Raw, 3, h2),
			}); err != nil {
				t.Fatal(err)
			}
			// The same key again, twice in one batch, with an earlier time:
			// counters add up, times keep the latest.
			if err := s.Add(ctx, []Row{
				delta(h1, "ann", "email", Raw, 10, seen1),
				delta(h1, "ann", "email", Raw, 100, time.Time{}),
			}); err != nil {
				t.Fatal(err)
			}
			if err := s.Add(ctx, nil); err != nil {
				t.Fatal(err)
			}
			got := queryAll(t, s)
			want := []Row{
				delta(h1, "ann", "email", Raw, 111, seen2),
				delta(h1, "ann", "email", Masked, 2, seen1),
				delta(h2, "bob", "email", Raw, 3, h2),
			}
			SortRows(want)
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("stored\n %+v\nwant\n %+v", got, want)
			}
			// Query from a time inside h2 returns h2's rows only.
			later, err := s.Query(ctx, h2.Add(30*time.Minute))
			if err != nil {
				t.Fatal(err)
			}
			if len(later) != 1 || later[0].User != "bob" {
				t.Errorf("Query(since h2) = %+v", later)
			}
			// Reopening keeps the data and the schema.
			s.Close()
			s2 := openStore(t, spec)
			if again := queryAll(t, s2); fmt.Sprint(again) != fmt.Sprint(want) {
				t.Errorf("after reopen\n %+v", again)
			}
		})
	}
}

func requirePostgresIf(t *testing.T, kind string) {
	if kind == "postgres" {
		requirePostgres(t)
	}
}

func TestStoresRefuseNewerSchema(t *testing.T) {
	ctx := context.Background()
	t.Run("sqlite", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "usage.db")
		s, err := OpenSQLite(ctx, path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.db.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", SchemaVersion+1)); err != nil {
			t.Fatal(err)
		}
		s.Close()
		if _, err := OpenSQLite(ctx, path); !errors.Is(err, ErrNewerSchema) {
			t.Fatalf("open = %v, want ErrNewerSchema", err)
		}
	})
	t.Run("postgres", func(t *testing.T) {
		url := testDatabase(t)
		s, err := OpenPostgres(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.pool.Exec(ctx, "UPDATE pgveil.usage_schema SET version = $1", SchemaVersion+1); err != nil {
			t.Fatal(err)
		}
		s.Close()
		if _, err := OpenPostgres(ctx, url); !errors.Is(err, ErrNewerSchema) {
			t.Fatalf("open = %v, want ErrNewerSchema", err)
		}
	})
}

func TestOpenSpecs(t *testing.T) {
	ctx := context.Background()
	for _, spec := range []string{"", "mysql://u:secret@h/db", "usage.db"} {
		_, err := Open(ctx, spec)
		if err == nil {
			t.Errorf("Open(%q) succeeded", spec)
		} else if strings.Contains(err.Error(), "secret") {
			t.Errorf("Open(%q) error shows the password: %v", spec, err)
		}
	}
	s, err := Open(ctx, "sqlite://"+filepath.Join(t.TempDir(), "u.db"))
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
}

// TestTwoLedgersShareOnePostgresStore runs two ledgers, each with its own
// connection pool (as two proxies would), flushing the same keys into one
// table concurrently and often, and checks the sums.
func TestTwoLedgersShareOnePostgresStore(t *testing.T) {
	url := testDatabase(t)
	ctx := context.Background()
	const perLedger = 2000
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for p := range 2 {
		// Both open at once: schema creation must not race.
		store, err := OpenPostgres(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		defer store.Close()
		l, err := New(Config{Store: store, FlushInterval: 2 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perLedger {
				// Keys overlap between the ledgers and come in different
				// orders, so concurrent upserts lock the same rows.
				c := fmt.Sprintf("c%d", (i+p*7)%13)
				l.Record(stmt(t0, "shared", []string{"shared"}, 1, true,
					col("t", c, Output, Raw), col("t", "id", Filter, Raw)))
				if i%200 == 0 {
					time.Sleep(time.Millisecond)
				}
			}
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			errs <- l.Close(cctx)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var stmts, idStmts, rows int64
	if err := conn.QueryRow(ctx, `SELECT sum(statements), sum(statements) FILTER (WHERE column_name = 'id'), sum(rows_returned)
		FROM pgveil.column_usage`).Scan(&stmts, &idStmts, &rows); err != nil {
		t.Fatal(err)
	}
	if stmts != 4*perLedger || idStmts != 2*perLedger || rows != 2*perLedger {
		t.Fatalf("stored statements=%d (id %d) rows=%d; want %d (%d) %d", stmts, idStmts, rows, 4*perLedger, 2*perLedger, 2*perLedger)
	}
}

// TestPostgresStoreWithoutCreatePrivilege opens an existing store as an
// account that may only use the table, as docs/usage.md promises.
func TestPostgresStoreWithoutCreatePrivilege(t *testing.T) {
	url := testDatabase(t)
	ctx := context.Background()
	s, err := OpenPostgres(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	db := url[strings.LastIndex(url, "/")+1 : strings.Index(url, "?")]
	if _, err := s.pool.Exec(ctx, `DO $$ BEGIN
			IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'usage_writer') THEN CREATE ROLE usage_writer LOGIN; END IF;
		END $$;
		REVOKE CREATE ON DATABASE `+db+` FROM PUBLIC;
		GRANT USAGE ON SCHEMA pgveil TO usage_writer;
		GRANT SELECT ON pgveil.usage_schema TO usage_writer;
		GRANT SELECT, INSERT, UPDATE ON pgveil.column_usage TO usage_writer`); err != nil {
		t.Fatal(err)
	}
	s.Close()
	writerURL := strings.Replace(url, "postgres://postgres@", "postgres://usage_writer@", 1)
	w, err := OpenPostgres(ctx, writerURL)
	if err != nil {
		t.Fatalf("open as usage_writer: %v", err)
	}
	defer w.Close()
	h := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	for range 2 {
		if err := w.Add(ctx, []Row{delta(h, "ann", "email", Raw, 1, h)}); err != nil {
			t.Fatal(err)
		}
	}
	if rows := queryAll(t, w); len(rows) != 1 || rows[0].Statements != 2 {
		t.Fatalf("rows = %+v", rows)
	}
}
