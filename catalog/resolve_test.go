package catalog

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// resolveSchema sets up schemas, privileges and same-named tables so that
// each search_path case resolves t (and friends) differently. Roles are
// cluster-wide, hence the rs_ prefix.
const resolveSchema = `
DROP ROLE IF EXISTS rs_alice, rs_bob, rs_grp, rs_noinh, rs_owner;
CREATE ROLE rs_alice;
CREATE ROLE rs_bob;
CREATE ROLE rs_grp;
CREATE ROLE rs_noinh NOINHERIT;
CREATE ROLE rs_owner;
GRANT rs_grp TO rs_bob;
GRANT rs_grp TO rs_noinh;
ALTER DATABASE %[1]s OWNER TO rs_owner;

CREATE SCHEMA rs_alice AUTHORIZATION rs_alice;
CREATE SCHEMA s1;
CREATE SCHEMA s2;
CREATE SCHEMA priv;
CREATE SCHEMA grp;
CREATE SCHEMA dbo;
CREATE SCHEMA "S1";
GRANT USAGE ON SCHEMA s1, s2, "S1" TO PUBLIC;
GRANT USAGE ON SCHEMA grp TO rs_grp;
GRANT USAGE ON SCHEMA dbo TO pg_database_owner;
GRANT USAGE ON SCHEMA public TO PUBLIC;

CREATE TABLE public.t ();
CREATE TABLE s1.t ();
CREATE TABLE s2.t ();
CREATE TABLE priv.t ();
CREATE TABLE grp.t ();
CREATE TABLE dbo.t ();
CREATE TABLE rs_alice.t ();
CREATE TABLE "S1".t ();
CREATE TABLE public.only_public ();
CREATE TABLE s2.only_s2 ();
CREATE TABLE s1.pg_class ();
CREATE TABLE public.pg_stats ();
CREATE TABLE s1.x (a int);
CREATE INDEX shadow ON s1.x (a);
CREATE TABLE s2.shadow ();
CREATE VIEW s2.v AS SELECT 1 AS one;

CREATE FUNCTION s1.fn(int) RETURNS int LANGUAGE sql AS 'SELECT 1';
CREATE FUNCTION s2.fn(text) RETURNS int LANGUAGE sql AS 'SELECT 2';
CREATE FUNCTION s2.fn(int, int) RETURNS int LANGUAGE sql AS 'SELECT 3';
`

// resolveNames are the unqualified names every case resolves.
var resolveNames = []string{"t", "only_public", "only_s2", "pg_class", "pg_stats", "pg_roles",
	"shadow", "tmp", "v", "missing", "T"}

// TestResolveMatchesServer resolves names under a matrix of search paths,
// users and temporary schemas and compares every answer, and the search
// path itself, with what a live session of the server says.
func TestResolveMatchesServer(t *testing.T) {
	c := sharedCluster(t)
	db := createDB(t, c)
	psql(t, c, db, fmt.Sprintf(resolveSchema, db))
	t.Cleanup(func() {
		psql(t, c, "postgres", fmt.Sprintf("DROP DATABASE %s; DROP ROLE rs_alice, rs_bob, rs_grp, rs_noinh, rs_owner;", db))
	})

	cases := []struct {
		name     string
		role     string // "" stays the superuser
		path     string // SQL for SET search_path; "" keeps the default
		temp     bool   // create temporary tables t and tmp
		wantPath []string
	}{
		{name: "default", wantPath: []string{"pg_catalog", "public"}},
		{name: "pg_catalog implicit first", path: "s1, public", wantPath: []string{"pg_catalog", "s1", "public"}},
		{name: "pg_catalog explicit later", path: "s1, pg_catalog", wantPath: []string{"s1", "pg_catalog"}},
		{name: "pg_catalog explicit after public", path: "public, pg_catalog"},
		{name: "user schema", role: "rs_alice", path: `"$user", public`,
			wantPath: []string{"pg_catalog", "rs_alice", "public"}},
		{name: "no user schema", role: "rs_bob", path: `"$user", public`},
		{name: "missing schemas skipped", path: "nosuch, s2, also_missing"},
		{name: "no usage skipped", role: "rs_alice", path: "priv, s1", wantPath: []string{"pg_catalog", "s1"}},
		{name: "superuser has usage", path: "priv, s1"},
		{name: "usage through membership", role: "rs_bob", path: "grp, s1"},
		{name: "noinherit member lacks usage", role: "rs_noinh", path: "grp, s1"},
		{name: "database owner", role: "rs_owner", path: "dbo, s1"},
		{name: "quoted upper case", path: `"S1", s2`},
		{name: "upper case folded", path: `S1, s2`},
		{name: "duplicates", path: "s2, s1, s2, pg_catalog, s1"},
		{name: "empty", path: "''", wantPath: []string{"pg_catalog"}},
		{name: "temp implicit first", path: "s1", temp: true},
		{name: "temp explicit last", path: "s1, pg_temp", temp: true},
		{name: "temp explicit middle", path: "s2, pg_temp, pg_catalog, s1", temp: true},
		{name: "temp as user", role: "rs_alice", path: `"$user", pg_temp`, temp: true},
		{name: "pg_temp without temp schema", path: "pg_temp, s1"},
		{name: "temp schema by name", path: "s1, TEMP, s2", temp: true},
		{name: "temp schema by name as user", role: "rs_bob", path: "TEMP, pg_catalog", temp: true},
	}

	ctx := context.Background()
	conns := make([]*pgx.Conn, len(cases))
	for i, tc := range cases {
		conn := connect(t, c, db)
		conns[i] = conn
		if tc.role != "" {
			mustExec(t, conn, "SET ROLE "+tc.role)
		}
		if tc.temp {
			mustExec(t, conn, "CREATE TEMP TABLE t (); CREATE TEMP TABLE tmp ()")
		}
		if tc.path != "" {
			path := tc.path
			if strings.Contains(path, "TEMP") {
				var temp string
				err := conn.QueryRow(ctx, "SELECT pg_my_temp_schema()::regnamespace::text").Scan(&temp)
				if err != nil {
					t.Fatal(err)
				}
				path = strings.ReplaceAll(path, "TEMP", temp)
			}
			mustExec(t, conn, "SET search_path = "+path)
		}
	}
	// The snapshot must see the sessions' temporary schemas.
	s := load(t, c, db)

	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conn := conns[i]
			// The test's own queries qualify everything: s1.pg_class
			// would otherwise stand in for pg_catalog.pg_class.
			var user, pathText, temp string
			var serverPath []string
			err := conn.QueryRow(ctx, `
SELECT pg_catalog.current_user(), pg_catalog.current_setting('search_path'),
       pg_catalog.current_schemas(true)`).Scan(&user, &pathText, &serverPath)
			if err != nil {
				t.Fatal(err)
			}
			// current_schemas creates the temporary schema if pg_temp
			// comes first, so ask for it afterwards.
			err = conn.QueryRow(ctx, `
SELECT coalesce(nullif(pg_catalog.pg_my_temp_schema(), 0)::pg_catalog.regnamespace::pg_catalog.text, '')`).
				Scan(&temp)
			if err != nil {
				t.Fatal(err)
			}
			if tc.temp && temp == "" {
				t.Fatal("no temporary schema")
			}
			elems, err := ParseSearchPath(pathText)
			if err != nil {
				t.Fatal(err)
			}
			sp := SearchPath{Schemas: elems, User: user, TempSchema: temp}
			t.Logf("search_path %s → %q, user %s, temp %q", pathText, elems, user, temp)

			if got := s.Path(sp); !reflect.DeepEqual(got, serverPath) {
				t.Errorf("Path = %q, server's current_schemas(true) = %q", got, serverPath)
			}
			if tc.wantPath != nil && !reflect.DeepEqual(serverPath, tc.wantPath) {
				t.Errorf("server path %q, the case expects %q (test setup?)", serverPath, tc.wantPath)
			}

			for _, name := range resolveNames {
				var oid uint32
				var kind string
				err := conn.QueryRow(ctx, `
SELECT coalesce(c.oid, 0), coalesce(c.relkind::pg_catalog.text, '')
FROM (SELECT pg_catalog.to_regclass(pg_catalog.quote_ident($1)) AS r) x
LEFT JOIN pg_catalog.pg_class c ON c.oid = x.r`, name).Scan(&oid, &kind)
				if err != nil {
					t.Fatal(err)
				}
				got := s.Resolve(sp, name)
				switch {
				case kind == "i":
					// The server finds an index first and would fail.
					if got != nil {
						t.Errorf("Resolve(%s) = %v, want nil (the server finds an index)", name, got.Name)
					}
				case oid == 0:
					if got != nil {
						t.Errorf("Resolve(%s) = %v, want nil", name, got.Name)
					}
				case got == nil:
					t.Errorf("Resolve(%s) = nil, server resolves %v", name, nameOf(s, oid))
				case got.OID != oid:
					t.Errorf("Resolve(%s) = %v, server resolves %v", name, got.Name, nameOf(s, oid))
				}
			}
		})
	}

	t.Run("qualified", func(t *testing.T) {
		var temp string
		if err := conns[16].QueryRow(ctx, `SELECT pg_my_temp_schema()::regnamespace::text`).Scan(&temp); err != nil {
			t.Fatal(err)
		}
		sp := SearchPath{Schemas: []string{"s1"}, TempSchema: temp}
		if r := s.ResolveQualified(sp, "pg_temp", "tmp"); r == nil || r.Name != (Name{temp, "tmp"}) {
			t.Errorf("ResolveQualified(pg_temp.tmp) = %v", r)
		}
		if r := s.ResolveQualified(SearchPath{}, "pg_temp", "tmp"); r != nil {
			t.Errorf("ResolveQualified(pg_temp.tmp) without temp schema = %v", r.Name)
		}
		if r := s.ResolveQualified(sp, "s2", "t"); r == nil || r.Name != (Name{"s2", "t"}) {
			t.Errorf("ResolveQualified(s2.t) = %v", r)
		}
		if r := s.ResolveQualified(sp, "", "t"); r == nil || r.Name != (Name{temp, "t"}) {
			t.Errorf("ResolveQualified(t) = %v", r)
		}
	})

	t.Run("functions", func(t *testing.T) {
		var got []string
		for _, f := range s.ResolveFunctions(SearchPath{Schemas: []string{"s2", "s1"}}, "fn") {
			got = append(got, fmt.Sprintf("%s%v", f.Name, f.ArgTypes))
		}
		want := []string{"s2.fn[25]", "s2.fn[23 23]", "s1.fn[23]"}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("ResolveFunctions(fn) = %q, want %q", got, want)
		}
		// pg_catalog comes first, implicitly.
		lower := s.ResolveFunctions(SearchPath{Schemas: []string{"s1"}}, "lower")
		if len(lower) == 0 || lower[0].Name.Schema != "pg_catalog" {
			t.Errorf("ResolveFunctions(lower) = %v", lower)
		}
	})

	t.Run("roles", func(t *testing.T) {
		if got, want := s.RolesOf("rs_bob"), []string{"rs_bob", "rs_grp"}; !reflect.DeepEqual(got, want) {
			t.Errorf("RolesOf(rs_bob) = %q, want %q", got, want)
		}
		// Membership counts whether or not it inherits privileges.
		if got, want := s.RolesOf("rs_noinh"), []string{"rs_grp", "rs_noinh"}; !reflect.DeepEqual(got, want) {
			t.Errorf("RolesOf(rs_noinh) = %q, want %q", got, want)
		}
		if got, want := s.RolesOf("rs_owner"), []string{"pg_database_owner", "rs_owner"}; !reflect.DeepEqual(got, want) {
			t.Errorf("RolesOf(rs_owner) = %q, want %q", got, want)
		}
		if s.DatabaseOwner != "rs_owner" {
			t.Errorf("DatabaseOwner = %q", s.DatabaseOwner)
		}
	})
}

// nameOf describes the relation with OID oid for a message.
func nameOf(s *Snapshot, oid uint32) string {
	if r := s.RelationByOID(oid); r != nil {
		return fmt.Sprintf("%v (OID %d)", r.Name, oid)
	}
	return fmt.Sprintf("OID %d (not in the snapshot)", oid)
}

func mustExec(t *testing.T, conn *pgx.Conn, sql string) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// TestRoles checks nested memberships against the server's own answer.
func TestRoles(t *testing.T) {
	c := sharedCluster(t)
	db := createDB(t, c)
	psql(t, c, db, `
DROP ROLE IF EXISTS ro_a, ro_b, ro_c, ro_d, ro_e, ro_lone;
CREATE ROLE ro_c;
CREATE ROLE ro_b IN ROLE ro_c;
CREATE ROLE ro_a LOGIN IN ROLE ro_b;
CREATE ROLE ro_d IN ROLE ro_c;
CREATE ROLE ro_e IN ROLE ro_b, ro_d;  -- a diamond: two ways to ro_c
CREATE ROLE ro_lone SUPERUSER BYPASSRLS;
GRANT pg_read_all_data TO ro_c;
`)
	t.Cleanup(func() { psql(t, c, "postgres", "DROP ROLE ro_a, ro_b, ro_c, ro_d, ro_e, ro_lone") })
	// PostgreSQL refuses a membership cycle.
	if _, err := c.PsqlDB(context.Background(), db, "GRANT ro_a TO ro_c"); err == nil {
		t.Error("the server accepted a membership cycle")
	}
	s := load(t, c, db)
	conn := connect(t, c, db)

	for user, want := range map[string][]string{
		"ro_a":    {"pg_read_all_data", "ro_a", "ro_b", "ro_c"},
		"ro_b":    {"pg_read_all_data", "ro_b", "ro_c"},
		"ro_c":    {"pg_read_all_data", "ro_c"},
		"ro_e":    {"pg_read_all_data", "ro_b", "ro_c", "ro_d", "ro_e"},
		"ro_lone": {"ro_lone"},
		"nobody":  {"nobody"},
	} {
		if got := s.RolesOf(user); !reflect.DeepEqual(got, want) {
			t.Errorf("RolesOf(%s) = %q, want %q", user, got, want)
		}
		if user == "nobody" || user == "ro_lone" {
			continue // unknown; or a superuser, "member" of everything to pg_has_role
		}
		var server []string
		err := conn.QueryRow(context.Background(), `
SELECT array_agg(rolname ORDER BY rolname) FROM pg_roles
WHERE pg_has_role($1, oid, 'MEMBER') AND rolname <> 'pg_database_owner'`, user).Scan(&server)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(server, want) {
			t.Errorf("server says %s is a member of %q, the test expects %q", user, server, want)
		}
	}
	a := s.Role("ro_a")
	if a == nil || !a.CanLogin || a.Superuser || !a.Inherit || a.OID == 0 {
		t.Errorf("Role(ro_a) = %+v", a)
	}
	if want := []string{"pg_read_all_data", "ro_b", "ro_c"}; !reflect.DeepEqual(a.MemberOf, want) {
		t.Errorf("ro_a.MemberOf = %q, want %q", a.MemberOf, want)
	}
	if l := s.Role("ro_lone"); l == nil || !l.Superuser || !l.BypassRLS || l.MemberOf != nil {
		t.Errorf("Role(ro_lone) = %+v", l)
	}
	if s.Role("nobody") != nil || s.Role("public") != nil {
		t.Error("Role returns unknown roles")
	}
	if p := s.Role("postgres"); p == nil || !slices.Contains(p.MemberOf, "pg_database_owner") {
		t.Errorf("postgres (owner of %s) = %+v, want a member of pg_database_owner", db, p)
	}
}
