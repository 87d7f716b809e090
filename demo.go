package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/pflag"

	"github.com/pgveil/pgveil/internal/pgcluster"
	"github.com/pgveil/pgveil/proxy"
)

// demoSchema is the demo's sample data: synthetic customers and orders,
// generated in SQL so the demo needs no network and no files.
const demoSchema = `
CREATE DATABASE demo;
\connect demo
CREATE ROLE analyst LOGIN;
CREATE ROLE support LOGIN;
CREATE ROLE dpo LOGIN;
CREATE ROLE pgveil LOGIN;
CREATE TABLE customers (
	id          int PRIMARY KEY,
	name        text NOT NULL,
	email       text NOT NULL,
	ssn         text NOT NULL,
	birth_date  date NOT NULL,
	salary      numeric(10,2) NOT NULL,
	city        text NOT NULL,
	opted_out   bool NOT NULL DEFAULT false
);
CREATE TABLE orders (
	id          int PRIMARY KEY,
	customer_id int NOT NULL REFERENCES customers,
	amount      numeric(10,2) NOT NULL,
	created_at  timestamptz NOT NULL
);
INSERT INTO customers
SELECT g,
       (ARRAY['Ada','Grace','Alan','Edsger','Barbara','Donald','Frances','Ken'])[1 + g % 8] || ' ' ||
       (ARRAY['Lovelace','Hopper','Turing','Dijkstra','Liskov','Knuth','Allen','Thompson'])[1 + (g / 8) % 8],
       lower((ARRAY['ada','grace','alan','edsger','barbara','donald','frances','ken'])[1 + g % 8]) || g || '@example.com',
       lpad((100000000 + g * 7919 % 899999999)::text, 9, '0'),
       date '1950-01-01' + (g * 3671 % 18000),
       30000 + (g * 7907 % 120000),
       (ARRAY['Lisbon','Oslo','Nairobi','Lima','Osaka','Tallinn'])[1 + g % 6],
       g % 10 = 0
FROM generate_series(1, 1000) g;
INSERT INTO orders
SELECT g, 1 + g * 17 % 1000, round((5 + g * 37 % 500)::numeric, 2),
       timestamptz '2026-01-01 00:00:00+00' + g * interval '37 minutes'
FROM generate_series(1, 5000) g;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO analyst, support, dpo;
`

// demoPolicy is the demo's policy (DESIGN.md §3) over the customers table:
// analyst sees every class masked, support sees email raw, dpo sees
// everything raw. Any other role (postgres included) is masked.
const demoPolicy = `# pgveil demo policy: which roles see which customer data masked.
version: 1
classes:
  email:       { mask: email }               # a***@example.com
  national_id: { mask: "partial(last=4)" }   # *****6789
  birth_date:  { mask: "truncate(year)" }    # 1980-01-01
  salary:      { mask: "round(-4)" }         # 90000
columns:
  public.customers.email: email
  public.customers.ssn: national_id
  public.customers.birth_date: birth_date
  public.customers.salary: salary
roles:
  analyst: {}                # every class masked
  support: { raw: [email] }  # email raw, the rest masked
  dpo:     { raw: all }      # everything raw
unknown_roles: mask
`

// demoAccount is the proxy's own account in the demo cluster, which it
// reads the catalog with.
const demoAccount = "pgveil"

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("demo", pflag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:6432", "address for the demo proxy (port 0 picks a free one)")
	pgBin := fs.String("pg-bin", "", "directory of the PostgreSQL programs (default: pg_ctl on PATH, else the newest /usr/lib/postgresql/*/bin)")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	log, err := newLogger(stderr, "text", *logLevel)
	if err != nil {
		return err
	}
	bin, err := pgcluster.FindBinDir(*pgBin)
	if err != nil {
		return fmt.Errorf("demo needs PostgreSQL installed: %w", err)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return usagef("cannot listen on --listen %s: %v", *listen, err)
	}
	defer ln.Close()

	fmt.Fprintln(stdout, "pgveil demo: starting a throwaway PostgreSQL...")
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	pg, err := pgcluster.Start(sctx, pgcluster.Config{BinDir: bin})
	cancel()
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer func() {
		fmt.Fprintln(stdout, "pgveil demo: stopping PostgreSQL and removing", pg.Dir)
		if err := pg.Stop(); err != nil {
			fmt.Fprintln(stderr, "pgveil demo:", err)
		}
	}()
	lctx, cancel := context.WithTimeout(ctx, time.Minute)
	_, err = pg.Psql(lctx, demoSchema)
	cancel()
	if err != nil {
		return fmt.Errorf("demo: loading sample data: %w", err)
	}

	policyFile := filepath.Join(pg.Dir, "policy.yaml")
	if err := os.WriteFile(policyFile, []byte(demoPolicy), 0o644); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	// The upstream URL's user is the proxy's own account (catalog reads);
	// clients still authenticate as themselves.
	upstream := pg.URL(demoAccount, "", "demo")
	up, err := proxy.ParseUpstream(upstream)
	if err != nil {
		return err
	}
	ctx, cancelMasking := context.WithCancel(ctx)
	defer cancelMasking()
	masking, err := startMasking(ctx, policyFile, upstream, time.Minute, log)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	srv, err := proxy.New(proxy.Config{Upstream: up, Logger: log, Masking: masking})
	if err != nil {
		return err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	conn := func(user string) string {
		return fmt.Sprintf(`psql "host=127.0.0.1 port=%d user=%s dbname=demo"`, port, user)
	}
	fmt.Fprintf(stdout, `
pgveil demo is running.
  PostgreSQL %s (data in %s) on 127.0.0.1:%d
  pgveil proxy on 127.0.0.1:%d, masking with the policy in %s

Connect through the proxy as each role and run the same query:

  SELECT name, email, ssn, birth_date, salary FROM customers LIMIT 3;

  %s
      analyst: every classified column masked (g***@example.com, *****7919, 1960-01-01, 40000.00)
  %s
      support: email raw; ssn, birth date and salary masked
  %s
      dpo: everything raw

Masking happens at the source, so filters and functions see masked values too:
  SELECT count(*) FROM customers WHERE ssn LIKE '1%%';   -- 0 for analyst
and what cannot be analysed is refused (SQLSTATE 42501):
  SELECT query_to_xml('SELECT ssn FROM customers', true, true, '');
Other users: postgres (superuser, not in the policy: masked like analyst) and
pgveil (the proxy's catalog account); trust authentication.
Press Ctrl-C to stop; everything is removed.
`, bin, pg.DataDir, pg.Port, port, policyFile, conn("analyst"), conn("support"), conn("dpo"))
	return serveUntilSignal(ctx, srv, ln, 5*time.Second, log)
}
