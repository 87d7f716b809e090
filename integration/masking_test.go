package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgveil/pgveil/proxy"
)

// shopSchema is the masked-session fixture: database "shop" with a
// classified customers table and logins for each policy role.
const shopSchema = `
CREATE DATABASE shop;
\connect shop
CREATE ROLE shop_analyst LOGIN;
CREATE ROLE shop_support LOGIN;
CREATE ROLE shop_dpo LOGIN;
CREATE ROLE shop_pgveil LOGIN;
CREATE TABLE customers (
	id int PRIMARY KEY,
	name text NOT NULL,
	email text,
	ssn varchar(11),
	birth_date date,
	salary numeric(10,2),
	city text
);
INSERT INTO customers VALUES
	(1, 'Ada Lovelace', 'ada@example.com', '123-45-6789', '1815-12-10', 91234.56, 'London'),
	(2, 'Alan Turing', 'alan@example.org', '987-65-4321', '1912-06-23', 123456.78, 'Wilmslow');
CREATE TABLE orders (id int PRIMARY KEY, customer_id int REFERENCES customers, amount numeric(10,2));
INSERT INTO orders VALUES (1, 1, 10.50), (2, 2, 20.00);
GRANT SELECT ON ALL TABLES IN SCHEMA public TO shop_analyst, shop_support, shop_dpo;
`

const shopPolicy = `version: 1
classes:
  email:       { mask: email }
  national_id: { mask: "partial(last=4)" }
  birth_date:  { mask: "truncate(year)" }
  salary:      { mask: "round(-4)" }
columns:
  public.customers.email: email
  public.customers.ssn: national_id
  public.customers.birth_date: birth_date
  public.customers.salary: salary
roles:
  shop_analyst: {}
  shop_support: { raw: [email] }
  shop_dpo:     { raw: all }
`

var shop struct {
	once  sync.Once
	err   error
	proxy *proxyInstance
}

// shopProxy returns a proxy enforcing shopPolicy on database shop.
func shopProxy(t *testing.T) *proxyInstance {
	t.Helper()
	shop.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := w.pg.Psql(ctx, shopSchema); err != nil {
			shop.err = err
			return
		}
		// The shared proxy lives as long as the test binary.
		shop.proxy, _, shop.err = newPolicyProxy(ctx, w.dir, shopPolicy)
	})
	if shop.err != nil {
		t.Fatal(shop.err)
	}
	return shop.proxy
}

func shopDSN(p *proxyInstance, user string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=shop sslmode=disable", p.port, user)
}

// policyProxy starts a proxy enforcing policy (YAML text) on database shop;
// it stops when the test ends.
func policyProxy(t *testing.T, policy string) *proxyInstance {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, stop, err := newPolicyProxy(ctx, t.TempDir(), policy)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.close(); stop() })
	return p
}

// newPolicyProxy writes policy to dir and starts a proxy enforcing it on
// database shop; stop ends its catalog refreshes.
func newPolicyProxy(ctx context.Context, dir, policy string) (*proxyInstance, func(), error) {
	file := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(file, []byte(policy), 0o644); err != nil {
		return nil, nil, err
	}
	mk, stop, err := newLiveMasking(ctx, file, w.pg.URL("shop_pgveil", "", "shop"))
	if err != nil {
		return nil, nil, err
	}
	p, err := startProxy(fmt.Sprintf("postgres://127.0.0.1:%d/shop?sslmode=disable", w.pg.Port), func(c *proxy.Config) { c.Masking = mk })
	if err != nil {
		stop()
		return nil, nil, err
	}
	return p, stop, nil
}

// TestMaskedByRole checks what each role sees through psql.
func TestMaskedByRole(t *testing.T) {
	p := shopProxy(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	q := "SELECT email, ssn, birth_date, salary FROM customers ORDER BY id"
	for _, tc := range []struct{ user, want string }{
		{"shop_analyst", "a***@example.com|*******6789|1815-01-01|90000.00\na***@example.org|*******4321|1912-01-01|120000.00"},
		{"shop_support", "ada@example.com|*******6789|1815-01-01|90000.00\nalan@example.org|*******4321|1912-01-01|120000.00"},
		{"shop_dpo", "ada@example.com|123-45-6789|1815-12-10|91234.56\nalan@example.org|987-65-4321|1912-06-23|123456.78"},
	} {
		out, stderr, err := runCmd(ctx, nil, psqlPath(), "-X", "-A", "-t", "-c", q, shopDSN(p, tc.user))
		if err != nil {
			t.Fatalf("%s: %v %s", tc.user, err, stderr)
		}
		if got := strings.TrimSpace(out); got != tc.want {
			t.Errorf("%s sees\n%s\nwant\n%s", tc.user, got, tc.want)
		}
	}
	// A refusal is SQLSTATE 42501 and names the rule; the session goes on.
	out, stderr, _ := runCmd(ctx, nil, psqlPath(), "-X", "-A", "-t", "-v", "VERBOSITY=verbose",
		"-c", "SELECT query_to_xml('select * from customers', true, true, '')", "-c", "SELECT 'alive'", shopDSN(p, "shop_analyst"))
	if !strings.Contains(stderr, "42501") || !strings.Contains(stderr, "query_to_xml") || strings.TrimSpace(out) != "alive" {
		t.Fatalf("refusal: out %q stderr %q", out, stderr)
	}
}

// TestMaskedBinaryTypes scans masked values with pgx in binary format into
// typed Go values: a masked date is still a date, a masked numeric a
// numeric.
func TestMaskedBinaryTypes(t *testing.T) {
	p := shopProxy(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeDescribeExec, pgx.QueryExecModeSimpleProtocol} {
		cfg, err := pgx.ParseConfig(shopDSN(p, "shop_analyst"))
		if err != nil {
			t.Fatal(err)
		}
		cfg.DefaultQueryExecMode = mode
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		var email, ssn string
		var birth time.Time
		var salary float64
		err = conn.QueryRow(ctx, "SELECT email, ssn, birth_date, salary FROM customers WHERE id = $1", 1).Scan(&email, &ssn, &birth, &salary)
		conn.Close(ctx)
		if err != nil {
			t.Fatalf("mode %v: %v", mode, err)
		}
		if email != "a***@example.com" || ssn != "*******6789" || !birth.Equal(time.Date(1815, 1, 1, 0, 0, 0, 0, time.UTC)) || salary != 90000 {
			t.Fatalf("mode %v: got %q %q %v %v", mode, email, ssn, birth, salary)
		}
	}
}

// TestMaskedMetaCommands runs psql's describe commands and pg_dump as a
// masked login: deny-by-default must not break normal work.
func TestMaskedMetaCommands(t *testing.T) {
	p := shopProxy(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, c := range []string{`\d`, `\dt`, `\dn`, `\df`, `\dv`, `\du`, `\l`, `\d customers`, `\d+ customers`, `\x`, `\conninfo`, `\dp customers`} {
		_, stderr, err := runCmd(ctx, nil, psqlPath(), "-X", "-c", c, shopDSN(p, "shop_analyst"))
		if err != nil || strings.Contains(stderr, "ERROR") {
			t.Errorf("%s: %v %s", c, err, stderr)
		}
	}
	// Queries psql's tab completion sends.
	for _, q := range []string{
		`SELECT pg_catalog.quote_ident(c.relname) FROM pg_catalog.pg_class c WHERE c.relkind IN ('r', 'S', 'v', 'm', 'f', 'p') AND substring(pg_catalog.quote_ident(c.relname),1,3)='cus' AND pg_catalog.pg_table_is_visible(c.oid) LIMIT 1000`,
		`SELECT pg_catalog.quote_ident(attname) FROM pg_catalog.pg_attribute a, pg_catalog.pg_class c WHERE c.oid = a.attrelid AND a.attnum > 0 AND NOT a.attisdropped AND substring(pg_catalog.quote_ident(attname),1,1)='e' AND (pg_catalog.quote_ident(relname)='customers' OR '"' || relname || '"'='customers') AND pg_catalog.pg_table_is_visible(c.oid) LIMIT 1000`,
	} {
		out, stderr, err := runCmd(ctx, nil, psqlPath(), "-X", "-A", "-t", "-c", q, shopDSN(p, "shop_analyst"))
		if err != nil || strings.TrimSpace(out) == "" {
			t.Errorf("completion query: %v %q %s", err, out, stderr)
		}
	}
}

// TestMaskedPgDump dumps the database as a masked login, restores the
// dump into a new database, and checks the restored values are masked.
func TestMaskedPgDump(t *testing.T) {
	p := shopProxy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dump, stderr, err := runCmd(ctx, nil, w.pg.Bin("pg_dump"), "--no-owner", "--no-privileges", "-t", "customers", shopDSN(p, "shop_analyst"))
	if err != nil {
		t.Fatalf("pg_dump: %v\n%s", err, stderr)
	}
	if strings.Contains(dump, "123-45-6789") || strings.Contains(dump, "ada@example.com") {
		t.Fatal("the dump holds raw values")
	}
	if _, err := w.pg.Psql(ctx, "DROP DATABASE IF EXISTS shop_restored; CREATE DATABASE shop_restored"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.pg.PsqlDB(ctx, "shop_restored", dump); err != nil {
		t.Fatalf("restore: %v", err)
	}
	out, err := w.pg.PsqlDB(ctx, "shop_restored", "SELECT email, ssn, birth_date, salary FROM customers ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	if want := "a***@example.com|*******6789|1815-01-01|90000.00\na***@example.org|*******4321|1912-01-01|120000.00"; out != want {
		t.Fatalf("restored:\n%s\nwant\n%s", out, want)
	}
}

// TestMaskedJDBCAndPsycopg reads masked tables with JDBC (plain, prepared
// and binary, plus DatabaseMetaData) and psycopg (text and binary).
func TestMaskedJDBCAndPsycopg(t *testing.T) {
	p := shopProxy(t)
	env := []string{"PGHOST=127.0.0.1", fmt.Sprintf("PGPORT=%d", p.port), "PGUSER=shop_analyst", "PGDATABASE=shop", "PGSSLMODE=disable"}
	t.Run("jdbc", func(t *testing.T) {
		java := needCommand(t, "java")
		jar := needFile(t, "/usr/share/java/postgresql.jar")
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		out, stderr, err := runCmd(ctx, env, java, "-cp", jar, abs(t, "clients/jdbc/Masked.java"))
		if err != nil {
			t.Fatalf("%v\n%s\n%s", err, stderr, out)
		}
		for _, want := range []string{
			"plain: a***@example.com *******6789 1815-01-01 90000.00",
			"prepared: a***@example.com *******6789 1815-01-01 90000.00",
			"tables: [customers, orders]", "columns: [id:int4, name:text, email:text, ssn:varchar, birth_date:date, salary:numeric, city:text]",
			"pk: id", "fk: customer_id -> customers", "index: customers_pkey", "schemas include public: true", "done: ok",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("JDBC output lacks %q:\n%s", want, out)
			}
		}
	})
	t.Run("psycopg", func(t *testing.T) {
		py := needFile(t, "/usr/bin/python3")
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, stderr, err := runCmd(ctx, env, py, abs(t, "clients/psycopg/masked.py"))
		if err != nil {
			t.Fatalf("%v\n%s", err, stderr)
		}
		for _, want := range []string{
			"text: a***@example.com *******6789 1815-01-01 90000.00 date Decimal",
			"binary: a***@example.com *******6789 1815-01-01 90000.00 date Decimal",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("psycopg output lacks %q:\n%s", want, out)
			}
		}
	})
}

// TestUnknownRoleRejected: with unknown_roles: reject, a login none of
// whose roles is in the policy is refused at startup with a clear message;
// a policy role still gets in.
func TestUnknownRoleRejected(t *testing.T) {
	shopProxy(t) // creates the database and roles
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := policyProxy(t, shopPolicy+"unknown_roles: reject\n")
	_, err := pgx.Connect(ctx, shopDSN(p, "shop_pgveil"))
	if c := serverCode(err); c != "28000" || !strings.Contains(err.Error(), `role "shop_pgveil" is not in the policy`) {
		t.Fatalf("unknown role: %v", err)
	}
	conn, err := pgx.Connect(ctx, shopDSN(p, "shop_analyst"))
	if err != nil {
		t.Fatalf("policy role refused: %v", err)
	}
	conn.Close(ctx)
}

// TestCatalogRefreshAfterDDL creates a classified table through the proxy
// (as a raw role): the proxy sees the DDL's CommandComplete, refreshes its
// catalog, and a masked session can read the new table masked at once.
func TestCatalogRefreshAfterDDL(t *testing.T) {
	shopProxy(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// A schema of its own keeps the other tests' view of public unchanged.
	if _, err := w.pg.PsqlDB(ctx, "shop", "DROP SCHEMA IF EXISTS late CASCADE; CREATE SCHEMA late AUTHORIZATION shop_dpo; GRANT USAGE ON SCHEMA late TO shop_analyst"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = w.pg.PsqlDB(context.Background(), "shop", "DROP SCHEMA IF EXISTS late CASCADE") })
	p := policyProxy(t, strings.Replace(shopPolicy, "columns:\n", "columns:\n  late.customers.email: email\n", 1))
	analyst, err := pgx.Connect(ctx, shopDSN(p, "shop_analyst"))
	if err != nil {
		t.Fatal(err)
	}
	defer analyst.Close(ctx)
	_, err = analyst.Exec(ctx, "SELECT email FROM late.customers")
	if c := serverCode(err); c != "42501" {
		t.Fatalf("before the table exists: %v, want the catalog refusal", err)
	}
	dpo, err := pgx.Connect(ctx, shopDSN(p, "shop_dpo"))
	if err != nil {
		t.Fatal(err)
	}
	defer dpo.Close(ctx)
	if _, err := dpo.Exec(ctx, "CREATE TABLE late.customers (id int, email text); INSERT INTO late.customers VALUES (1, 'late@example.com'); GRANT SELECT ON late.customers TO shop_analyst"); err != nil {
		t.Fatal(err)
	}
	var email string
	waitFor(t, 10*time.Second, "the refreshed catalog", func() bool {
		return analyst.QueryRow(ctx, "SELECT email FROM late.customers").Scan(&email) == nil
	})
	if email != "l***@example.com" {
		t.Fatalf("new table read as %q, want it masked", email)
	}
}
