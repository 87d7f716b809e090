package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgveil/pgveil/internal/pgcluster"
	"github.com/pgveil/pgveil/proxy"
)

// testCluster starts a throwaway PostgreSQL for one test. Without
// PostgreSQL installed the test is skipped, or fails when
// PGVEIL_REQUIRE_ALL=1 (make test, CI).
func testCluster(t *testing.T) *pgcluster.Cluster {
	t.Helper()
	if _, err := pgcluster.FindBinDir(""); err != nil {
		if os.Getenv("PGVEIL_REQUIRE_ALL") == "1" {
			t.Fatalf("PostgreSQL is required: %v", err)
		}
		t.Skipf("PostgreSQL not installed: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg, err := pgcluster.Start(ctx, pgcluster.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pg.Stop(); err != nil {
			t.Error(err)
		}
	})
	return pg
}

const hardenPolicy = `version: 1
classes:
  email:  { mask: email }
  ssn:    { mask: deny }
  salary: { mask: "round(-3)" }
  card:   { mask: deny }
columns:
  public.customers.email: email
  public.customers.ssn: ssn
  public.customers.salary: salary
  public.events.card: card
roles:
  analyst: {}
  support: { raw: [email] }
  dpo:     { raw: all }
unknown_roles: reject
`

func TestHardenTemplate(t *testing.T) {
	p := writeFile(t, "policy.yaml", hardenPolicy)
	code, out, errs := runCLI(t, "harden", "--policy", p, "--proxy-address", "10.1.2.3")
	if code != exitOK {
		t.Fatalf("exit %d\n%s", code, errs)
	}
	for _, w := range []string{
		"--   analyst: masks email, salary; denies card, ssn",
		"--   support: masks salary; denies card, ssn",
		"-- Roles that see everything raw (left as they are): dpo",
		"BEGIN;",
		`EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC, "analyst", "support"', current_database());`,
		`EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO "dpo"', current_database());`,
		`REVOKE EXECUTE ON FUNCTION pg_catalog.query_to_xml(text, boolean, boolean, text) FROM PUBLIC, "analyst", "support";`,
		`GRANT EXECUTE ON FUNCTION pg_catalog.query_to_xml(text, boolean, boolean, text) TO "dpo";`,
		`REVOKE EXECUTE ON FUNCTION pg_catalog.pg_read_file(text) FROM PUBLIC, "analyst", "support";`,
		`-- REVOKE SELECT ON TABLE "public"."customers" FROM "analyst", "support";`,
		`-- GRANT SELECT (<every column of public.customers except "ssn">) ON TABLE "public"."customers" TO "analyst", "support";`,
		`-- GRANT SELECT (<every column of public.events except "card">) ON TABLE "public"."events" TO "analyst", "support";`,
		`ALTER ROLE "analyst" SET search_path = "$user", public;`,
		`ALTER ROLE "analyst" SET standard_conforming_strings = on;`,
		"--   host   all  analyst,support  10.1.2.3/32  scram-sha-256",
		"--   host   all  analyst,support  all  reject",
		"COMMIT;",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q", w)
		}
	}
	if strings.Contains(out, `pg_read_file(text) TO`) {
		t.Error("server-file functions must never be granted back")
	}
	if t.Failed() {
		t.Logf("output:\n%s", out)
	}

	// Without a deny class, column grants stay as they are.
	p = writeFile(t, "policy.yaml", "version: 1\nclasses:\n  email: { mask: email }\ncolumns:\n  public.c.email: email\nroles:\n  analyst: {}\n")
	if code, out, _ = runCLI(t, "harden", "--policy", p); code != exitOK || !strings.Contains(out, "No masked role sees a deny-class column") || strings.Contains(out, "GRANT SELECT (") {
		t.Errorf("no deny class: exit %d\n%s", code, out)
	}

	// Nobody masked: nothing to do.
	p = writeFile(t, "policy.yaml", "version: 1\nroles:\n  dpo: { raw: all }\nunknown_roles: reject\n")
	if code, out, _ = runCLI(t, "harden", "--policy", p); code != exitOK || !strings.Contains(out, "nothing to harden") || strings.Contains(out, "REVOKE") {
		t.Errorf("nothing masked: exit %d\n%s", code, out)
	}

	if code, _, errs = runCLI(t, "harden", "--policy", p, "--proxy-address", "not-an-ip"); code != exitUsage || !strings.Contains(errs, "--proxy-address") {
		t.Errorf("bad --proxy-address: exit %d %q", code, errs)
	}
	bad := writeFile(t, "policy.yaml", "version: 2\n")
	if code, _, errs = runCLI(t, "harden", "--policy", bad); code != exitUsage || !strings.Contains(errs, "policy.yaml:1: version") {
		t.Errorf("invalid policy: exit %d %q", code, errs)
	}
}

const hardenSchema = `
CREATE DATABASE app;
\connect app
CREATE ROLE pgveil LOGIN;
CREATE ROLE analyst LOGIN;
CREATE ROLE support LOGIN;
CREATE ROLE dpo LOGIN;
CREATE ROLE alice LOGIN IN ROLE analyst;
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, ssn text, salary numeric(10,2));
INSERT INTO customers VALUES (1, 'Ada', 'ada@example.com', '123-45-6789', 91234.56),
                             (2, 'Alan', 'alan@example.com', '987-65-4321', 45678.00);
CREATE TABLE events (id int, at date, card text) PARTITION BY RANGE (at);
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
INSERT INTO events VALUES (1, '2025-06-01', '4111111111111111');
CREATE VIEW customer_names AS SELECT id, name FROM customers;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO analyst, support, dpo;
`

// TestHardenLive runs harden's output through psql against a real
// PostgreSQL, then checks that masked roles connecting directly are
// refused what the proxy never reads, while the proxy still works.
func TestHardenLive(t *testing.T) {
	pg := testCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := pg.Psql(ctx, hardenSchema); err != nil {
		t.Fatal(err)
	}
	policyFile := writeFile(t, "policy.yaml", hardenPolicy)
	upstream := pg.URL("pgveil", "", "app")
	code, script, errs := runCLI(t, "harden", "--policy", policyFile, "--upstream", upstream)
	if code != exitOK {
		t.Fatalf("harden: exit %d\n%s", code, errs)
	}
	for _, w := range []string{
		`REVOKE TEMPORARY ON DATABASE "app" FROM PUBLIC, "alice", "analyst", "support";`,
		`GRANT TEMPORARY ON DATABASE "app" TO "dpo";`,
		`GRANT SELECT ("id", "name", "email", "salary") ON TABLE "public"."customers" TO "analyst", "support";`,
		`GRANT SELECT ("id", "at") ON TABLE "public"."events" TO "analyst", "support";`,
		`GRANT SELECT ("id", "at") ON TABLE "public"."events_2025" TO "analyst", "support";`,
		`REVOKE SELECT ON TABLE "public"."customer_names" FROM "analyst", "support";`,
		"role pgveil is pgveil's own account",
		"role postgres is a superuser",
	} {
		if !strings.Contains(script, w) {
			t.Errorf("script lacks %q", w)
		}
	}
	if strings.Contains(script, "WARNING") {
		t.Errorf("unexpected warning")
	}
	if t.Failed() {
		t.Fatalf("script:\n%s", script)
	}
	// The script runs, and runs again (it is idempotent).
	for i := 0; i < 2; i++ {
		if _, err := pg.PsqlDB(ctx, "app", script); err != nil {
			t.Fatalf("psql run %d: %v\nscript:\n%s", i+1, err, script)
		}
	}

	connect := func(t *testing.T, port int, user string) *pgx.Conn {
		t.Helper()
		cfg, err := pgx.ParseConfig(fmt.Sprintf("postgres://%s@127.0.0.1:%d/app?sslmode=disable", user, port))
		if err != nil {
			t.Fatal(err)
		}
		c, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatalf("connect as %s: %v", user, err)
		}
		t.Cleanup(func() { c.Close(context.Background()) })
		return c
	}
	denied := func(t *testing.T, c *pgx.Conn, sql string) {
		t.Helper()
		_, err := c.Exec(ctx, sql)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "42501" {
			t.Errorf("%s: got %v, want SQLSTATE 42501", sql, err)
		}
	}
	works := func(t *testing.T, c *pgx.Conn, sql string) {
		t.Helper()
		if _, err := c.Exec(ctx, sql); err != nil {
			t.Errorf("%s: %v", sql, err)
		}
	}

	for _, role := range []string{"analyst", "alice", "support"} {
		t.Run("direct/"+role, func(t *testing.T) {
			c := connect(t, pg.Port, role)
			denied(t, c, "SELECT ssn FROM customers")
			denied(t, c, "SELECT * FROM customers")
			denied(t, c, "SELECT card FROM events")
			denied(t, c, "SELECT card FROM events_2025")
			denied(t, c, "SELECT * FROM customer_names")
			denied(t, c, "SELECT query_to_xml('SELECT ssn FROM customers', true, true, '')")
			denied(t, c, "SELECT * FROM ts_stat('SELECT to_tsvector(ssn) FROM customers')")
			denied(t, c, "SELECT lo_get(1)")
			denied(t, c, "SELECT pg_read_file('PG_VERSION')")
			denied(t, c, "CREATE TEMP TABLE t (x int)")
			works(t, c, "SELECT id, name, email, salary FROM customers")
			works(t, c, "SELECT count(*) FROM customers")
			works(t, c, "SELECT id, at FROM events_2025")
			var sp string
			if err := c.QueryRow(ctx, "SHOW search_path").Scan(&sp); err != nil || sp != `"$user", public` {
				t.Errorf("search_path %q, %v", sp, err)
			}
			var scs, source string
			if err := c.QueryRow(ctx, "SELECT setting, source FROM pg_settings WHERE name = 'standard_conforming_strings'").Scan(&scs, &source); err != nil || scs != "on" || source != "user" {
				t.Errorf("standard_conforming_strings %q from %q, %v", scs, source, err)
			}
		})
	}
	t.Run("direct/dpo", func(t *testing.T) {
		c := connect(t, pg.Port, "dpo")
		works(t, c, "SELECT ssn FROM customers")
		works(t, c, "SELECT card FROM events")
		works(t, c, "SELECT query_to_xml('SELECT 1', true, true, '')")
		works(t, c, "SELECT lo_create(0)")
		works(t, c, "CREATE TEMP TABLE t (x int)")
	})

	// Through the proxy the masked roles still read everything they may.
	t.Run("proxy", func(t *testing.T) {
		pctx, stop := context.WithCancel(ctx)
		defer stop()
		log := slog.New(slog.DiscardHandler)
		src, err := startMasking(pctx, policyFile, upstream, time.Minute, log)
		if err != nil {
			t.Fatal(err)
		}
		up, err := proxy.ParseUpstream(upstream)
		if err != nil {
			t.Fatal(err)
		}
		srv, err := proxy.New(proxy.Config{Upstream: up, Masking: src, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(ln)
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
		port := ln.Addr().(*net.TCPAddr).Port
		for _, tc := range []struct{ role, email string }{
			{"analyst", "a***@example.com"},
			{"alice", "a***@example.com"},
			{"support", "ada@example.com"},
		} {
			c := connect(t, port, tc.role)
			var email string
			var ssn *string
			var salary float64
			if err := c.QueryRow(ctx, "SELECT email, ssn, salary::float8 FROM (SELECT * FROM customers) c WHERE id = 1").Scan(&email, &ssn, &salary); err == nil {
				t.Errorf("%s: naming ssn through the proxy was not refused", tc.role)
			}
			if err := c.QueryRow(ctx, "SELECT * FROM customers WHERE id = 1").Scan(new(int), new(string), &email, &ssn, &salary); err != nil {
				t.Fatalf("%s through the proxy: %v", tc.role, err)
			}
			if email != tc.email || ssn != nil || salary != 91000 {
				t.Errorf("%s through the proxy: %q %v %v", tc.role, email, ssn, salary)
			}
			var n int
			if err := c.QueryRow(ctx, "SELECT count(*) FROM events WHERE card IS NULL").Scan(&n); err == nil {
				t.Errorf("%s: naming card through the proxy was not refused", tc.role)
			}
			if err := c.QueryRow(ctx, "SELECT count(*) FROM (SELECT * FROM events) e").Scan(&n); err != nil || n != 1 {
				t.Errorf("%s: events through the proxy: %d %v", tc.role, n, err)
			}
		}
	})
}

// TestHardenTemplateRuns runs the script harden prints without --upstream
// (the commented template, the DO blocks, every function signature)
// against a real PostgreSQL.
func TestHardenTemplateRuns(t *testing.T) {
	pg := testCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := pg.Psql(ctx, "CREATE ROLE analyst LOGIN; CREATE ROLE support LOGIN; CREATE ROLE dpo LOGIN;"); err != nil {
		t.Fatal(err)
	}
	p := writeFile(t, "policy.yaml", hardenPolicy)
	code, script, errs := runCLI(t, "harden", "--policy", p)
	if code != exitOK {
		t.Fatalf("exit %d\n%s", code, errs)
	}
	if _, err := pg.Psql(ctx, script); err != nil {
		t.Fatalf("psql: %v", err)
	}
	// Every listed signature exists in this server version: none was
	// skipped by the DO block alone.
	var missing []string
	for _, sig := range append(append([]string{}, publicFunctions...), serverFileFunctions...) {
		out, err := pg.Psql(ctx, "SELECT to_regprocedure('pg_catalog."+sig+"') IS NOT NULL")
		if err != nil || out != "t" {
			missing = append(missing, sig)
		}
	}
	if len(missing) > 0 {
		t.Errorf("signatures not in this PostgreSQL: %v", missing)
	}
	out, err := pg.Psql(ctx, `SELECT string_agg(f, ',' ORDER BY f) FROM unnest(ARRAY['query_to_xml(text,boolean,boolean,text)', 'lo_get(oid)', 'ts_stat(text)']) f
		WHERE has_function_privilege('analyst', f, 'EXECUTE') OR NOT has_function_privilege('dpo', f, 'EXECUTE')`)
	if err != nil || out != "" {
		t.Errorf("function privileges after harden: %q %v", out, err)
	}
	out, err = pg.Psql(ctx, `SELECT has_database_privilege('analyst', 'postgres', 'TEMP'), has_database_privilege('dpo', 'postgres', 'TEMP')`)
	if err != nil || out != "f|t" {
		t.Errorf("TEMP after harden: %q %v", out, err)
	}
}
