-- The psql scenario: run direct and through the proxy, outputs compared.
SET TimeZone = 'UTC';
CREATE TEMP TABLE t (id int PRIMARY KEY, v text, d date, n numeric, ts timestamptz, b bytea, a int[]);
INSERT INTO t SELECT g, 'v' || g || ' ✓', date '2024-01-01' + g, g * 1.5, timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour', decode(md5(g::text), 'hex'), ARRAY[g, g + 1] FROM generate_series(1, 100) g;
SELECT * FROM t ORDER BY id LIMIT 5;
-- Several statements in one Query message, one of them failing.
SELECT 1 AS a \; SELECT 2 AS b \; SELECT 1/0 \; SELECT 3 AS never;
SELECT 'after multi-statement' AS ok;
PREPARE p(int) AS SELECT v, n FROM t WHERE id = $1;
EXECUTE p(7);
EXECUTE p(8);
DEALLOCATE p;
BEGIN;
INSERT INTO t (id, v) VALUES (1000, 'x');
SAVEPOINT s;
INSERT INTO t (id, v) VALUES (1, 'duplicate');
ROLLBACK TO SAVEPOINT s;
SELECT count(*) FROM t;
ROLLBACK;
SELECT count(*) FROM t;
SELECT 1/0;
SELEC 1;
SELECT 'still here' AS ok;
DO $$ BEGIN RAISE NOTICE 'a notice with %', 'detail'; RAISE WARNING 'a warning'; END $$;
SET client_min_messages = debug1;
SET application_name = 'changed';
SHOW application_name;
RESET client_min_messages;
COPY t (id, v) FROM STDIN;
2001	copied one
2002	copied two
\.
COPY t (id, v) FROM STDIN (FORMAT csv);
3001,"csv, with comma"
3002,"csv ""quoted"""
\.
COPY t (id, v) FROM STDIN;
4001	bad	extra column
\.
COPY (SELECT * FROM t ORDER BY id) TO STDOUT;
COPY (SELECT * FROM t ORDER BY id) TO STDOUT (FORMAT csv, HEADER);
SELECT count(*), sum(id) FROM t;
LISTEN psql_chan;
NOTIFY psql_chan, 'hello';
SELECT pg_notify('psql_chan', 'world');
UNLISTEN *;
\lo_import :lofile
SELECT length(lo_get(:LASTOID)) AS lo_length;
SELECT lo_unlink(:LASTOID);
\pset format unaligned
\pset tuples_only on
\o :bigfile
SELECT g, md5(g::text) FROM generate_series(1, 1000000) g;
\o
SELECT repeat('x', 64 * 1024 * 1024) = repeat('x', 64 * 1024 * 1024) AS same;
\o :bigvalue
SELECT repeat('x', 64 * 1024 * 1024);
\o
\! sha256sum < "$PSQL_BIGFILE"
\! sha256sum < "$PSQL_BIGVALUE"
