package catalog

import (
	"context"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

const loadSchema = `
CREATE SCHEMA app;
CREATE SCHEMA "Mixed Case";
CREATE DOMAIN app.money2 AS numeric(10,2) CHECK (VALUE >= 0);
CREATE DOMAIN app.money3 AS app.money2;
CREATE DOMAIN app.email AS varchar(200);
CREATE TYPE app.mood AS ENUM ('ok', 'sad');
CREATE TYPE public.pair AS (a int, b text);
CREATE TABLE app.customers (
    id bigserial PRIMARY KEY,
    name varchar(20) NOT NULL,
    email app.email,
    balance numeric(10,2),
    credit app.money3,
    tags text[],
    grid int4[][],
    born date,
    seen timestamptz(3),
    mood app.mood,
    data jsonb,
    p public.pair,
    dropped int
);
ALTER TABLE app.customers DROP COLUMN dropped;
ALTER TABLE app.customers ADD COLUMN flags bit(3);
CREATE INDEX customers_name_idx ON app.customers (name);
CREATE TABLE app.orders (id int, customer_id bigint, total numeric(12,2));
CREATE TABLE app.log (x int);
CREATE RULE orders_log AS ON INSERT TO app.orders DO ALSO INSERT INTO app.log VALUES (1);

CREATE TABLE app.events (id int, at date, region text) PARTITION BY RANGE (at);
CREATE TABLE app.events_2024 PARTITION OF app.events
    FOR VALUES FROM ('2024-01-01') TO ('2025-01-01') PARTITION BY LIST (region);
CREATE TABLE app.events_2024_eu PARTITION OF app.events_2024 FOR VALUES IN ('eu');
CREATE TABLE app.events_2024_us PARTITION OF app.events_2024 FOR VALUES IN ('us');
CREATE TABLE app.events_2025 PARTITION OF app.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE app.events_default PARTITION OF app.events DEFAULT;
CREATE INDEX events_at_idx ON app.events (at);

CREATE TABLE app.base (id int);
CREATE TABLE app.other_base (note text);
CREATE TABLE app.derived (extra text) INHERITS (app.base, app.other_base);
CREATE TABLE app.derived2 () INHERITS (app.derived);

CREATE VIEW app.v_customers AS SELECT id, name, email FROM app.customers;
CREATE VIEW app.v_customers2 AS SELECT name FROM app.v_customers WHERE id > 1;
CREATE VIEW app.v_join AS
    SELECT c.name, o.total FROM app.customers c JOIN app.orders o ON o.customer_id = c.id;
CREATE MATERIALIZED VIEW app.mv_totals AS
    SELECT customer_id, sum(total) AS total FROM app.orders GROUP BY 1;
CREATE VIEW app.v_over_mv AS SELECT * FROM app.mv_totals;
CREATE VIEW app.v_events AS SELECT * FROM app.events;
CREATE VIEW app.v_const AS SELECT 1 AS one;
CREATE VIEW app.v_top AS SELECT v.name, j.total FROM app.v_customers2 v, app.v_join j;
CREATE VIEW app.v_stats AS SELECT tablename, attname, null_frac FROM pg_stats;
CREATE SEQUENCE app.seq;

CREATE FOREIGN DATA WRAPPER dummy_fdw;
CREATE SERVER dummy_server FOREIGN DATA WRAPPER dummy_fdw;
CREATE FOREIGN TABLE app.remote (a int, b text) SERVER dummy_server;

CREATE TABLE "Mixed Case"."Odd ""Name""" ("Col A" int);

CREATE FUNCTION app.f(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1';
CREATE FUNCTION app.f(text, int) RETURNS text LANGUAGE sql AS 'SELECT $1';
CREATE FUNCTION app.secret() RETURNS SETOF app.customers LANGUAGE sql SECURITY DEFINER STABLE
    AS 'SELECT * FROM app.customers';
CREATE PROCEDURE app.p() LANGUAGE plpgsql AS $$BEGIN END$$;
CREATE AGGREGATE app.agg(int) (sfunc = int4pl, stype = int);
CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS 'SELECT 1';
`

func TestLoad(t *testing.T) {
	c := sharedCluster(t)
	db := createDB(t, c)
	psql(t, c, db, loadSchema)
	conn := connect(t, c, db)
	before := time.Now()
	s := load(t, c, db)

	if s.Database != db {
		t.Errorf("Database = %q, want %q", s.Database, db)
	}
	if s.DatabaseOwner != "postgres" {
		t.Errorf("DatabaseOwner = %q, want postgres", s.DatabaseOwner)
	}
	if s.ServerVersion < 150000 || s.ServerVersion >= 160000 {
		t.Errorf("ServerVersion = %d, want 15.x", s.ServerVersion)
	}
	if s.Version != 0 {
		t.Errorf("Version = %d, want 0 from Load", s.Version)
	}
	if s.LoadedAt.Before(before.Add(-time.Minute)) || s.LoadedAt.After(time.Now()) {
		t.Errorf("LoadedAt = %v, not around now", s.LoadedAt)
	}

	t.Run("schemas", func(t *testing.T) {
		got := s.Schemas()
		for _, want := range []string{"Mixed Case", "app", "information_schema", "pg_catalog", "public"} {
			if !slices.Contains(got, want) {
				t.Errorf("Schemas() = %q, missing %q", got, want)
			}
		}
		for _, sch := range got {
			if strings.HasPrefix(sch, "pg_toast") {
				t.Errorf("Schemas() includes %q", sch)
			}
		}
		if !slices.IsSorted(got) {
			t.Errorf("Schemas() not sorted: %q", got)
		}
	})

	t.Run("columns", func(t *testing.T) {
		r := s.Relation(Name{"app", "customers"})
		if r == nil {
			t.Fatal("app.customers missing")
		}
		if want := queryOID(t, conn, `SELECT 'app.customers'::regclass::oid`); r.OID != want {
			t.Errorf("OID = %d, want %d", r.OID, want)
		}
		if s.RelationByOID(r.OID) != r {
			t.Errorf("RelationByOID(%d) is not the same relation", r.OID)
		}
		if r.Kind != KindTable || r.Owner != "postgres" || !r.Parent.IsZero() || r.Reads != nil {
			t.Errorf("relation = %+v", r)
		}
		typ := func(name string) uint32 {
			return queryOID(t, conn, `SELECT $1::regtype::oid`, name)
		}
		want := []Column{
			{Name: "id", Num: 1, TypeOID: 20, Type: "bigint", NotNull: true, Category: 'N'},
			{Name: "name", Num: 2, TypeOID: 1043, Type: "character varying(20)", NotNull: true, Category: 'S'},
			{Name: "email", Num: 3, TypeOID: typ("app.email"), Type: "app.email",
				BaseTypeOID: 1043, BaseType: "character varying(200)", Category: 'S'},
			{Name: "balance", Num: 4, TypeOID: 1700, Type: "numeric(10,2)", Category: 'N'},
			{Name: "credit", Num: 5, TypeOID: typ("app.money3"), Type: "app.money3",
				BaseTypeOID: 1700, BaseType: "numeric(10,2)", Category: 'N'},
			{Name: "tags", Num: 6, TypeOID: 1009, Type: "text[]", Category: 'A'},
			{Name: "grid", Num: 7, TypeOID: 1007, Type: "integer[]", Category: 'A'},
			{Name: "born", Num: 8, TypeOID: 1082, Type: "date", Category: 'D'},
			{Name: "seen", Num: 9, TypeOID: 1184, Type: "timestamp(3) with time zone", Category: 'D'},
			{Name: "mood", Num: 10, TypeOID: typ("app.mood"), Type: "app.mood", Category: 'E'},
			{Name: "data", Num: 11, TypeOID: 3802, Type: "jsonb", Category: 'U'},
			{Name: "p", Num: 12, TypeOID: typ("public.pair"), Type: "public.pair", Category: 'C'},
			{Name: "flags", Num: 14, TypeOID: 1560, Type: "bit(3)", Category: 'V'},
		}
		for i := range want {
			if want[i].BaseTypeOID == 0 {
				want[i].BaseTypeOID, want[i].BaseType = want[i].TypeOID, want[i].Type
			}
		}
		if !reflect.DeepEqual(r.Columns, want) {
			t.Errorf("columns differ:\n got %+v\nwant %+v", r.Columns, want)
		}
		if col := r.Column("email"); col == nil || col.Num != 3 {
			t.Errorf("Column(email) = %+v", col)
		}
		if col := r.Column("dropped"); col != nil {
			t.Errorf("Column(dropped) = %+v, want nil", col)
		}

		odd := s.Relation(Name{"Mixed Case", `Odd "Name"`})
		if odd == nil || len(odd.Columns) != 1 || odd.Columns[0].Name != "Col A" {
			t.Fatalf(`"Mixed Case"."Odd ""Name""" = %+v`, odd)
		}
		if got, want := odd.Name.String(), `"Mixed Case"."Odd ""Name"""`; got != want {
			t.Errorf("String() = %s, want %s", got, want)
		}
	})

	t.Run("kinds", func(t *testing.T) {
		for name, kind := range map[string]RelKind{
			"customers": KindTable, "events": KindPartitioned, "events_2024": KindPartitioned,
			"events_2024_eu": KindTable, "v_customers": KindView, "mv_totals": KindMatView,
			"remote": KindForeignTable, "seq": KindSequence, "customers_id_seq": KindSequence,
		} {
			r := s.Relation(Name{"app", name})
			if r == nil {
				t.Errorf("app.%s missing", name)
				continue
			}
			if r.Kind != kind {
				t.Errorf("app.%s kind = %c, want %c", name, r.Kind, kind)
			}
		}
		if r := s.Relation(Name{"public", "pair"}); r == nil || r.Kind != KindComposite || len(r.Columns) != 2 {
			t.Errorf("public.pair = %+v", r)
		}
		for _, idx := range []string{"customers_name_idx", "customers_pkey", "events_at_idx"} {
			if r := s.Relation(Name{"app", idx}); r != nil {
				t.Errorf("index app.%s loaded as a relation: %+v", idx, r)
			}
		}
		for _, sys := range []string{"pg_class", "pg_stats", "pg_roles"} {
			r := s.Relation(Name{"pg_catalog", sys})
			if r == nil || len(r.Columns) == 0 {
				t.Errorf("pg_catalog.%s = %+v", sys, r)
			}
		}
		if r := s.Relation(Name{"information_schema", "columns"}); r == nil || r.Kind != KindView {
			t.Errorf("information_schema.columns = %+v", r)
		}
		for _, r := range s.Relations() {
			if strings.HasPrefix(r.Name.Schema, "pg_toast") {
				t.Errorf("TOAST relation %v loaded", r.Name)
			}
		}
	})

	t.Run("partitions", func(t *testing.T) {
		n := func(name string) Name { return Name{"app", name} }
		got := s.Partitions(n("events"))
		want := []Name{n("events_2024"), n("events_2024_eu"), n("events_2024_us"), n("events_2025"), n("events_default")}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("Partitions(events) = %v, want %v", got, want)
		}
		if got, want := s.Partitions(n("events_2024")), want[1:3]; !reflect.DeepEqual(got, want) {
			t.Errorf("Partitions(events_2024) = %v, want %v", got, want)
		}
		if got := s.Partitions(n("customers")); got != nil {
			t.Errorf("Partitions(customers) = %v", got)
		}
		if p := s.Relation(n("events_2024_eu")).Parent; p != n("events_2024") {
			t.Errorf("events_2024_eu.Parent = %v", p)
		}
		if p := s.Relation(n("events_2025")).Parent; p != n("events") {
			t.Errorf("events_2025.Parent = %v", p)
		}
		// Classic inheritance is not partitioning.
		if got := s.Partitions(n("base")); got != nil {
			t.Errorf("Partitions(base) = %v", got)
		}
		if got, want := s.Descendants(n("base")), []Name{n("derived"), n("derived2")}; !reflect.DeepEqual(got, want) {
			t.Errorf("Descendants(base) = %v, want %v", got, want)
		}
		d := s.Relation(n("derived"))
		if want := []Name{n("base"), n("other_base")}; !reflect.DeepEqual(d.Inherits, want) || !d.Parent.IsZero() {
			t.Errorf("derived: Inherits = %v, Parent = %v", d.Inherits, d.Parent)
		}
		if got := len(d.Columns); got != 3 {
			t.Errorf("derived has %d columns, want 3 (id, note, extra)", got)
		}
		if got, want := s.Descendants(n("events")), s.Partitions(n("events")); !reflect.DeepEqual(got, want) {
			t.Errorf("Descendants(events) = %v, want %v", got, want)
		}
	})

	t.Run("views", func(t *testing.T) {
		n := func(name string) Name { return Name{"app", name} }
		for view, want := range map[string][]Name{
			"v_customers":  {n("customers")},
			"v_customers2": {n("customers"), n("v_customers")},
			"v_join":       {n("customers"), n("orders")},
			"mv_totals":    {n("orders")},
			"v_over_mv":    {n("mv_totals"), n("orders")},
			"v_events":     {n("events")},
			"v_const":      nil,
			"v_top":        {n("customers"), n("orders"), n("v_customers"), n("v_customers2"), n("v_join")},
			"orders":       nil, // its INSERT rule is not a view query
		} {
			r := s.Relation(n(view))
			if r == nil {
				t.Errorf("app.%s missing", view)
				continue
			}
			if len(r.Reads) != 0 || len(want) != 0 {
				if !reflect.DeepEqual(r.Reads, want) {
					t.Errorf("app.%s Reads = %v, want %v", view, r.Reads, want)
				}
			}
		}
		for rel, want := range map[string][]Name{
			"customers":   {n("v_customers"), n("v_customers2"), n("v_join"), n("v_top")},
			"orders":      {n("mv_totals"), n("v_join"), n("v_over_mv"), n("v_top")},
			"v_customers": {n("v_customers2"), n("v_top")},
			"mv_totals":   {n("v_over_mv")},
			"log":         nil,
			"v_top":       nil,
		} {
			if got := s.Dependents(n(rel)); !reflect.DeepEqual(got, want) {
				t.Errorf("Dependents(app.%s) = %v, want %v", rel, got, want)
			}
		}
		// A view over a system view depends on it (though not on the
		// pinned catalogs under it, which pg_depend does not record).
		if r := s.Relation(n("v_stats")); !slices.Contains(r.Reads, Name{"pg_catalog", "pg_stats"}) {
			t.Errorf("v_stats Reads = %v, want pg_catalog.pg_stats among them", r.Reads)
		}
		if got := s.Dependents(Name{"pg_catalog", "pg_stats"}); !slices.Contains(got, n("v_stats")) {
			t.Errorf("Dependents(pg_stats) = %v, want app.v_stats among them", got)
		}
	})

	t.Run("functions", func(t *testing.T) {
		fs := s.Functions(Name{"app", "f"})
		if len(fs) != 2 {
			t.Fatalf("Functions(app.f) = %+v, want 2 overloads", fs)
		}
		var args [][]uint32
		for _, f := range fs {
			if f.Kind != 'f' || f.Language != "sql" || f.Builtin || f.SecurityDefiner {
				t.Errorf("app.f = %+v", f)
			}
			args = append(args, f.ArgTypes)
		}
		if fs[0].OID > fs[1].OID {
			t.Errorf("Functions not ordered by OID")
		}
		if want := [][]uint32{{23}, {25, 23}}; !reflect.DeepEqual(args, want) {
			t.Errorf("ArgTypes = %v, want %v", args, want)
		}
		if fs[0].Volatility != 'i' || fs[1].Volatility != 'v' || fs[0].ReturnType != 23 {
			t.Errorf("volatility/return: %+v %+v", fs[0], fs[1])
		}
		sec := s.Functions(Name{"app", "secret"})
		if len(sec) != 1 || !sec[0].SecurityDefiner || !sec[0].ReturnsSet || sec[0].Volatility != 's' {
			t.Errorf("app.secret = %+v", sec)
		}
		if p := s.Functions(Name{"app", "p"}); len(p) != 1 || p[0].Kind != 'p' || p[0].Language != "plpgsql" {
			t.Errorf("app.p = %+v", p)
		}
		if a := s.Functions(Name{"app", "agg"}); len(a) != 1 || a[0].Kind != 'a' {
			t.Errorf("app.agg = %+v", a)
		}
		lower := s.Functions(Name{"pg_catalog", "lower"})
		if len(lower) == 0 {
			t.Fatal("pg_catalog.lower missing")
		}
		for _, f := range lower {
			if !f.Builtin || f.Language != "internal" {
				t.Errorf("pg_catalog.lower = %+v", f)
			}
		}
		var schemas []string
		for _, f := range s.FunctionsNamed("f") {
			schemas = append(schemas, f.Name.Schema)
		}
		if want := []string{"app", "app", "public"}; !reflect.DeepEqual(schemas, want) {
			t.Errorf("FunctionsNamed(f) schemas = %v, want %v", schemas, want)
		}
		if got := s.FunctionsNamed("pg_read_file"); len(got) == 0 {
			t.Error("FunctionsNamed(pg_read_file) is empty")
		}
	})
}

// TestLoadQueryCount checks that Load's queries do not grow with the
// schema and that it leaves the connection usable.
func TestLoadQueryCount(t *testing.T) {
	c := sharedCluster(t)
	db := createDB(t, c)
	psql(t, c, db, loadSchema)
	tr := &countingTracer{}
	conn := connectConfig(t, c, db, func(cfg *pgx.ConnConfig) { cfg.Tracer = tr })
	ctx := context.Background()
	if _, err := Load(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if tr.queries != QueryCount {
		t.Errorf("Load ran %d queries (%q), want QueryCount = %d", tr.queries, tr.sql, QueryCount)
	}
	if conn.PgConn().TxStatus() != 'I' {
		t.Errorf("transaction status after Load = %c, want I", conn.PgConn().TxStatus())
	}
	// The transaction-local settings are gone.
	var sp string
	if err := conn.QueryRow(ctx, "SHOW search_path").Scan(&sp); err != nil {
		t.Fatal(err)
	}
	if sp != `"$user", public` {
		t.Errorf("search_path after Load = %s", sp)
	}
	// Inside a transaction Load refuses rather than nesting.
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := Load(ctx, conn); err == nil {
		t.Error("Load inside a transaction succeeded")
	}
}

// countingTracer counts the queries sent on a connection, leaving out
// transaction control.
type countingTracer struct {
	queries int
	sql     []string
}

func (c *countingTracer) count(sql string) {
	word := strings.ToLower(strings.Fields(sql)[0])
	if word == "begin" || word == "rollback" || word == "commit" {
		return
	}
	c.queries++
	c.sql = append(c.sql, strings.Join(strings.Fields(sql), " "))
}

func (c *countingTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	c.count(d.SQL)
	return ctx
}

func (c *countingTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (c *countingTracer) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return ctx
}

func (c *countingTracer) TraceBatchQuery(_ context.Context, _ *pgx.Conn, d pgx.TraceBatchQueryData) {
	c.count(d.SQL)
}

func (c *countingTracer) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

// TestLoadUnprivileged loads as a role with no privileges at all: the
// catalog is readable by PUBLIC.
func TestLoadUnprivileged(t *testing.T) {
	c := sharedCluster(t)
	db := createDB(t, c)
	psql(t, c, db, loadSchema+`
DROP ROLE IF EXISTS ld_plain;
CREATE ROLE ld_plain LOGIN;
REVOKE ALL ON SCHEMA public FROM PUBLIC;`)
	t.Cleanup(func() { psql(t, c, "postgres", "DROP DATABASE "+db+"; DROP ROLE ld_plain") })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.URL("ld_plain", "", db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	s, err := Load(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	if r := s.Relation(Name{"app", "customers"}); r == nil || len(r.Columns) != 13 {
		t.Errorf("app.customers as ld_plain = %+v", r)
	}
	if got := s.Relation(Name{"app", "v_top"}).Reads; len(got) != 5 {
		t.Errorf("app.v_top Reads as ld_plain = %v", got)
	}
}
