-- Sample data and logins for deploy/compose.yaml (password "demo" for the
-- people, "pgveil" for the proxy's catalog account).
CREATE ROLE pgveil LOGIN PASSWORD 'pgveil';
CREATE ROLE analyst LOGIN PASSWORD 'demo';
CREATE ROLE support LOGIN PASSWORD 'demo';
CREATE ROLE dpo LOGIN PASSWORD 'demo';
CREATE ROLE ops LOGIN PASSWORD 'demo';
CREATE TABLE customers (
	id int PRIMARY KEY,
	name text NOT NULL,
	email text,
	ssn text,
	birth_date date,
	salary numeric(10,2)
);
INSERT INTO customers
SELECT i, 'Customer ' || i, 'customer' || i || '@example.com',
       lpad((100000000 + i * 7919)::text, 9, '0'),
       date '1950-01-01' + (i * 37) % 18000,
       20000 + (i * 7907) % 150000
FROM generate_series(1, 1000) AS i;
GRANT SELECT ON customers TO analyst, support, dpo;
