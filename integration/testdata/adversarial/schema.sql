-- Schema of the adversarial fixture. It is loaded into two databases:
-- adv (raw data, behind the proxy) and adv_ref (the same schema holding the
-- data already masked, queried directly: the answer a masked session must
-- get). Data comes from data_raw.sql or data_masked.sql, then post.sql.
CREATE TABLE customers (
	id int PRIMARY KEY,
	name text NOT NULL,
	email text,
	ssn varchar(32) UNIQUE,
	birth_date date,
	salary numeric(10,2),
	city text,
	secret_note text
);
-- A CHECK constraint over an unmasked and a masked column: an UPDATE of
-- name alone is checked against the raw ssn.
ALTER TABLE customers ADD CONSTRAINT customers_name_probe CHECK (name <> 'Probe' OR ssn NOT LIKE 'CANARY%');
-- Unprotected tables used as probes.
CREATE TABLE probe (id int PRIMARY KEY, v text);
CREATE TABLE probe_u (v text UNIQUE);
CREATE TABLE probe_chk (v text CHECK (v NOT LIKE 'CANARY%'));
CREATE TABLE probe_fk (ssn varchar(32) REFERENCES customers (ssn));
CREATE TABLE probe_cust (customer_id int REFERENCES customers (id));
-- A partitioned table with a classified column; partitions in three schemas.
CREATE TABLE events (id int, customer_email text, at date) PARTITION BY RANGE (at);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE SCHEMA shadow;
CREATE TABLE shadow.customers (id int, name text, ssn text);
CREATE TABLE shadow.events_old PARTITION OF events FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
CREATE SCHEMA adv_team;
CREATE TABLE adv_team.events_team PARTITION OF events FOR VALUES FROM ('2030-01-01') TO ('2031-01-01');
-- Classic inheritance under a classified table.
CREATE TABLE staff (id int, ssn text);
CREATE TABLE staff_archive () INHERITS (staff);
-- Views: one classified by the policy, one not.
CREATE VIEW customer_contacts AS SELECT id, name, email, ssn FROM customers;
CREATE VIEW customer_names AS SELECT id, name, ssn FROM customers;
-- Objects someone else created that read the protected table with their
-- owner's rights: a function, an operator over it, and a function callable
-- in attribute notation on an unprotected row type.
CREATE FUNCTION peek_ssn(int) RETURNS text LANGUAGE sql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, public AS $$ SELECT ssn FROM public.customers WHERE id = $1 $$;
CREATE OPERATOR ### (RIGHTARG = int, FUNCTION = peek_ssn);
CREATE FUNCTION peek_probe(probe) RETURNS text LANGUAGE sql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, public AS $$ SELECT ssn FROM public.customers WHERE id = 1 $$;
CREATE SCHEMA evil AUTHORIZATION adv_other;
-- A helper in schema shadow named like a built-in: chosen instead of
-- pg_catalog.lower only when shadow precedes pg_catalog in search_path.
CREATE FUNCTION shadow.lower(text) RETURNS text LANGUAGE sql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, public AS $$ SELECT ssn FROM public.customers WHERE id = 1 $$;
-- Casts whose functions read the protected table (one returns the value,
-- one raises it), and a domain whose check raises it: a conversion runs
-- them with no function name in the statement.
CREATE TYPE peek_t AS (x int);
CREATE FUNCTION peek_cast(peek_t) RETURNS text LANGUAGE sql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, public AS $$ SELECT ssn FROM public.customers WHERE id = 1 $$;
CREATE CAST (peek_t AS text) WITH FUNCTION peek_cast(peek_t) AS IMPLICIT;
CREATE FUNCTION peek_raise(int) RETURNS peek_t LANGUAGE plpgsql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, public AS $$ BEGIN RAISE EXCEPTION 'peek %', (SELECT ssn FROM public.customers WHERE id = 1); END $$;
CREATE CAST (int AS peek_t) WITH FUNCTION peek_raise(int) AS ASSIGNMENT;
CREATE FUNCTION peek_check(text) RETURNS boolean LANGUAGE plpgsql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, public AS $$ BEGIN RAISE EXCEPTION 'peek %', (SELECT ssn FROM public.customers WHERE id = 1); END $$;
CREATE DOMAIN peek_d AS text CHECK (peek_check(VALUE));
CREATE TABLE probe_t (id int, t peek_t);
CREATE TABLE probe_d (v peek_d);
