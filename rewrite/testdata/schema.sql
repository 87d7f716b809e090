-- The schema every golden case is analysed against (loaded into a real
-- PostgreSQL; the catalog snapshot is read from it).
CREATE ROLE analyst;
CREATE ROLE support;
CREATE ROLE billing;
CREATE ROLE dpo;
CREATE ROLE marketing;
CREATE ROLE cardholder;
CREATE ROLE senior_support IN ROLE support;
CREATE SCHEMA crm;
CREATE DOMAIN public.email_address AS text CHECK (VALUE LIKE '%@%');
CREATE TABLE public.customers (
	id int PRIMARY KEY,
	name text NOT NULL,
	email text,
	ssn varchar(11),
	birth_date date,
	salary numeric(10,2),
	city text,
	opted_out bool NOT NULL DEFAULT false,
	secret_note text
);
CREATE UNIQUE INDEX customers_ssn ON public.customers (ssn);
CREATE TABLE public.ssn_refs (ssn varchar(11) REFERENCES public.customers (ssn));
CREATE TABLE public.orders (id int PRIMARY KEY, customer_id int, amount numeric(10,2), created_at timestamptz);
CREATE TABLE public.payments (id int PRIMARY KEY, customer_id int, card_number text);
CREATE TABLE public.contacts (id int, contact_email public.email_address);
INSERT INTO public.contacts VALUES (1, 'someone@example.com');
CREATE TABLE crm.customers (id int, email text);
CREATE TABLE crm.notes (id int, body text);
CREATE TABLE public.events (id int, customer_email text, at date) PARTITION BY RANGE (at);
CREATE TABLE public.events_2024 PARTITION OF public.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE public.events_2025 PARTITION OF public.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE VIEW public.customer_emails AS SELECT id, email FROM public.customers;
CREATE VIEW public.order_totals AS SELECT customer_id, sum(amount) AS total FROM public.orders GROUP BY customer_id;
CREATE VIEW public.masked_ok AS SELECT id, email FROM public.customers;
CREATE FUNCTION public.leak(text) RETURNS text LANGUAGE sql SECURITY DEFINER AS 'SELECT $1';
CREATE FUNCTION crm.helper(int) RETURNS int LANGUAGE sql AS 'SELECT $1';
CREATE OPERATOR public.### (RIGHTARG = int, FUNCTION = crm.helper);
CREATE FUNCTION public.peek(public.customers) RETURNS text LANGUAGE sql AS 'SELECT $1.ssn';
INSERT INTO public.customers VALUES
	(1, 'Ada Lovelace', 'ada@example.com', '123-45-6789', '1815-12-10', 91234.56, 'London', false, 'n1'),
	(2, 'Alan Turing', 'alan@example.org', '987-65-4321', '1912-06-23', 123456.78, 'Wilmslow', true, 'n2'),
	(3, 'Nobody', NULL, NULL, NULL, NULL, NULL, false, NULL);
INSERT INTO public.orders VALUES (1, 1, 10.50, '2024-01-01 10:00:00+00'), (2, 2, 20.00, '2024-02-01 10:00:00+00');
INSERT INTO public.payments VALUES (1, 1, '4111111111111111');
INSERT INTO public.events VALUES (1, 'ada@example.com', '2024-05-01'), (2, 'alan@example.org', '2025-05-01');
GRANT USAGE ON SCHEMA crm TO PUBLIC;
CREATE TABLE public.vip_customers (tier int) INHERITS (public.customers);
-- Encrypted columns hold ciphertext (here stand-in text).
CREATE TABLE public.cards (id int PRIMARY KEY, customer_id int, pan text, cvv text, holder text, token text);
INSERT INTO public.cards VALUES (1, 1, 'ct:v1:AAAA', 'ct:v1:BBBB', 'Ada', 'dt:v1:CCCC');
CREATE VIEW public.card_holders AS SELECT id, holder, pan FROM public.cards;
-- Review cases: a binary operator and "=" in a schema of their own, a
-- partitioned table whose partitions are classified differently from it,
-- a partly classified view.
CREATE SCHEMA shady;
GRANT USAGE ON SCHEMA shady TO PUBLIC;
CREATE FUNCTION shady.same(text, text) RETURNS boolean LANGUAGE sql AS 'SELECT $1 = $2';
CREATE OPERATOR public.=~= (LEFTARG = text, RIGHTARG = text, FUNCTION = shady.same);
CREATE OPERATOR shady.= (LEFTARG = text, RIGHTARG = text, FUNCTION = shady.same);
CREATE OPERATOR shady.>= (LEFTARG = text, RIGHTARG = text, FUNCTION = shady.same);
CREATE FUNCTION shady.lower(text) RETURNS text LANGUAGE sql AS 'SELECT $1';
CREATE TABLE public.logs (id int, who text) PARTITION BY LIST (id);
CREATE TABLE public.logs_a PARTITION OF public.logs FOR VALUES IN (1);
CREATE TABLE public.logs_b PARTITION OF public.logs FOR VALUES IN (2);
CREATE VIEW public.contact_view AS SELECT id, email, ssn FROM public.customers;
-- A masked column referencing an unprotected lookup table.
CREATE TABLE public.diag_codes (code text PRIMARY KEY, label text);
CREATE TABLE public.patients (id int, diagnosis text REFERENCES public.diag_codes (code) ON DELETE CASCADE ON UPDATE CASCADE);
-- Casts whose functions are not built in, and a domain whose check calls
-- one: converting a value runs them with no function name in the text.
CREATE TYPE public.peek_t AS (x int);
CREATE FUNCTION shady.peek_cast(public.peek_t) RETURNS text LANGUAGE sql AS 'SELECT ssn FROM public.customers WHERE id = 1';
CREATE CAST (public.peek_t AS text) WITH FUNCTION shady.peek_cast(public.peek_t) AS IMPLICIT;
CREATE FUNCTION shady.peek_from_int(int) RETURNS public.peek_t LANGUAGE sql AS 'SELECT ROW($1)::public.peek_t';
CREATE CAST (int AS public.peek_t) WITH FUNCTION shady.peek_from_int(int) AS ASSIGNMENT;
CREATE TABLE public.tagged (id int, t public.peek_t);
CREATE FUNCTION shady.peek_check(text) RETURNS boolean LANGUAGE sql AS 'SELECT true';
CREATE DOMAIN public.checked_text AS text CHECK (shady.peek_check(VALUE));
CREATE TABLE public.checked (id int, v public.checked_text);
-- Foreign keys into and out of row-filtered tables.
CREATE TABLE public.customer_tags (customer_id int REFERENCES public.customers (id), tag text);
CREATE TABLE public.note_kinds (kind text PRIMARY KEY);
CREATE TABLE public.customer_notes (customer_id int, kind text REFERENCES public.note_kinds (kind), note text);
-- Constraints over a masked column that a write of other columns is
-- checked against.
CREATE TABLE public.staff_pay (id int PRIMARY KEY, name text, salary numeric(10,2), bonus numeric(10,2), grade text,
	CHECK (bonus < salary), UNIQUE (grade, salary));
CREATE UNIQUE INDEX staff_pay_name_partial ON public.staff_pay (name) WHERE salary > 100000;
CREATE TABLE public.pay_nv (id int, note text, salary numeric(10,2));
ALTER TABLE public.pay_nv ADD CONSTRAINT pay_nv_positive CHECK (salary > 0) NOT VALID;
