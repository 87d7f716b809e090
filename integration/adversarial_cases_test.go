package integration

// The catalogue of the adversarial suite. One case per line or small block:
// name, SQL, expected outcome (see adversarial_test.go). Unless a case says
// otherwise it runs as adv_analyst (every class masked) on queryPaths.

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Product defects this suite found were all fixed: RETURNING *, plain
// INSERT/UPDATE unique-index oracles, foreign keys into masked columns,
// unresolvable and newer-than-snapshot relations, search_path changes in
// one message, in a batch and through prepared SETs, prepared statements
// re-analysed under another search_path or role, EXPLAIN of writes, JOIN
// USING on a denied column, views over pg_stats, "$user" after SET ROLE,
// non-built-in operators, functions in attribute notation, and two
// unaliased relations of the same name. A case that shows a new defect
// carries it in bug: (runAdvCase skips it, visibly) until it is fixed.

// rollback runs a write inside BEGIN ... ROLLBACK.
const rollback = true

// errContextInBatchText is the refusal of a statement after a search_path
// or role change in the same extended-protocol batch.
const errContextInBatchText = "pgveil: a statement that may change search_path or the role must be followed by Sync before the next Parse or Bind of a statement that resolves names in a masked session"

var advCases = []advCase{
	// --- Baseline: plain reads must be the masked values.
	{name: "select-star", sql: `SELECT * FROM customers ORDER BY id`, want: advMasked, ordered: true},
	{name: "select-columns-aliased", sql: `SELECT c.ssn AS s, c.email AS e, c.salary AS m, c.birth_date AS d FROM customers AS c ORDER BY c.id`, want: advMasked, ordered: true},
	{name: "column-alias-list", sql: `SELECT * FROM customers AS c(a, b, e, s) ORDER BY a`, want: advMasked, ordered: true},
	{name: "select-star-qualified", sql: `SELECT c.* FROM public.customers c WHERE c.id = 1`, want: advMasked},
	{name: "only", sql: `SELECT * FROM ONLY customers`, want: advMasked},
	{name: "table-statement", sql: `TABLE customers`, want: advMasked},
	{name: "schema-qualified-column", sql: `SELECT public.customers.ssn, public.customers.email FROM public.customers`, want: advMasked},

	// --- Expressions over masked columns.
	{name: "upper-lower-initcap", sql: `SELECT upper(email), lower(ssn), initcap(email), upper(ssn) FROM customers`, want: advMasked},
	{name: "substr-left-right", sql: `SELECT substr(ssn, 1, 10), substring(ssn FROM 12 FOR 9), left(ssn, 16), right(email, 30), split_part(email, '@', 1) FROM customers`, want: advMasked},
	{name: "concat", sql: `SELECT concat(ssn, '|', email), ssn || '/' || email, concat_ws(',', ssn, email, salary, birth_date) FROM customers`, want: advMasked},
	{name: "reverse", sql: `SELECT reverse(ssn), reverse(email) FROM customers`, want: advMasked},
	{name: "hashes", sql: `SELECT md5(ssn), md5(email), sha256(ssn::bytea), encode(sha512(convert_to(email, 'UTF8')), 'hex') FROM customers`, want: advMasked},
	{name: "encode", sql: `SELECT encode(ssn::bytea, 'base64'), encode(convert_to(email, 'UTF8'), 'hex'), encode(ssn::bytea, 'escape') FROM customers`, want: advMasked},
	{name: "decode-roundtrip", sql: `SELECT convert_from(decode(encode(convert_to(ssn, 'UTF8'), 'base64'), 'base64'), 'UTF8') FROM customers`, want: advMasked},
	{name: "regexp-translate-overlay", sql: `SELECT regexp_replace(ssn, '[^0-9]', '', 'g'), translate(ssn, '0123456789', 'abcdefghij'), overlay(ssn PLACING 'X' FROM 1 FOR 1), replace(ssn, '-', '') FROM customers`, want: advMasked},
	{name: "format", sql: `SELECT format('%s|%I|%L', ssn, coalesce(email, ''), salary) FROM customers`, want: advMasked},
	{name: "to-hex-of-chars", sql: `SELECT c.id, string_agg(to_hex(ascii(substr(c.ssn, i, 1))), '' ORDER BY i) FROM customers c, generate_series(1, 20) AS i GROUP BY c.id`, want: advMasked},
	{name: "ascii-per-char", sql: `SELECT i, ascii(substr(ssn, i, 1)), chr(ascii(substr(ssn, i, 1))) FROM customers, generate_series(1, 20) AS i WHERE id = 1`, want: advMasked},
	{name: "casts", sql: `SELECT ssn::bytea, email::bytea, ssn::text, salary::text, salary::int, salary::float8, salary::numeric(12,4), birth_date::text, birth_date::timestamp FROM customers`, want: advMasked},
	{name: "date-parts", sql: `SELECT extract(month FROM birth_date), extract(day FROM birth_date), extract(epoch FROM birth_date), to_char(birth_date, 'DD Mon YYYY J'), date_part('doy', birth_date), birth_date - DATE '1970-01-01' FROM customers`, want: advMasked},
	{name: "numeric-parts", sql: `SELECT salary * 100, trunc(salary), salary % 1000, to_char(salary, 'FM999999D99'), scale(salary), salary / 7 FROM customers`, want: advMasked},
	{name: "string-to-array", sql: `SELECT string_to_array(ssn, '-'), regexp_split_to_array(email, '[.@]'), to_tsvector('simple', email) FROM customers`, want: advMasked},
	{name: "collate", sql: `SELECT ssn COLLATE "C" FROM customers ORDER BY 1`, want: advMasked, ordered: true},
	{name: "builtins-qualified", sql: `SELECT pg_catalog.upper(ssn), pg_catalog.md5(email) FROM customers`, want: advMasked},

	// --- Syntax the rewrite must deparse faithfully (the server parses the
	// deparsed text, so any drift shows up as a different answer).
	{name: "deparse-operators", sql: `SELECT ssn SIMILAR TO 'C%' ESCAPE '#', ssn IS DISTINCT FROM email, email NOT ILIKE 'C%', -2 ^ 2, (ARRAY[ssn])[1], (birth_date, birth_date + 1) OVERLAPS (birth_date, birth_date + 2), normalize(email) FROM customers`, want: advMasked},
	{name: "deparse-string-continuation", sql: "SELECT 'a'\n'b' AS s, ssn FROM customers WHERE ssn LIKE '%' || '1' || '%' ESCAPE '\\'", want: advMasked},
	{name: "deparse-casts", sql: `SELECT CAST(ssn AS text), text 'x' || ssn, ssn::varchar(5), ssn::char(30), interval '1 day' * 2, birth_date AT TIME ZONE 'UTC' FROM customers`, want: advMasked},
	{name: "deparse-rollup-ties", sql: `SELECT city, GROUPING(city), max(ssn) FROM customers GROUP BY ROLLUP (city) ORDER BY city NULLS LAST, 2`, want: advMasked, ordered: true},
	{name: "deparse-fetch-with-ties", sql: `SELECT ssn FROM customers ORDER BY salary DESC NULLS LAST FETCH FIRST 1 ROWS WITH TIES`, want: advMasked},
	{name: "deparse-xml-functions", sql: `SELECT xmlserialize(content xmlelement(name a, ssn) AS text), xmlpi(name p, email), xmlconcat(xmlelement(name b, salary), xmlcomment(ssn)) FROM customers`, want: advMasked},
	{name: "deparse-json-operators", sql: `SELECT to_jsonb(c) ->> 'ssn', to_jsonb(c) #>> '{email}', to_jsonb(c) @? '$.salary ? (@ > 980000)' FROM customers c`, want: advMasked},
	{name: "schema-qualified-column-unqualified-from", sql: `SELECT public.customers.ssn FROM customers`, want: advMasked},
	{name: "same-name-two-schemas", sql: `SELECT public.customers.ssn, shadow.customers.ssn FROM public.customers, shadow.customers`, want: advMasked},

	// --- Whole-row references, JSON and XML constructors.
	{name: "row-to-json", sql: `SELECT row_to_json(c) FROM customers c`, want: advMasked},
	{name: "to-jsonb", sql: `SELECT to_jsonb(c), to_json(c.*) FROM customers AS c`, want: advMasked},
	{name: "json-agg", sql: `SELECT json_agg(c ORDER BY c.id), jsonb_agg(c.ssn ORDER BY c.id) FROM customers c`, want: advMasked},
	{name: "jsonb-build-object", sql: `SELECT jsonb_build_object('s', ssn, 'e', email, 'd', birth_date, 'm', salary), json_build_array(ssn, email) FROM customers`, want: advMasked},
	{name: "json-each-of-row", sql: `SELECT j.key, j.value FROM customers c, json_each_text(row_to_json(c)) AS j`, want: advMasked},
	{name: "jsonb-path", sql: `SELECT jsonb_path_query(to_jsonb(c), '$.ssn') FROM customers c`, want: advMasked},
	{name: "xmlelement-xmlforest", sql: `SELECT xmlelement(name c, xmlattributes(ssn AS s), email), xmlforest(ssn, email, salary, birth_date) FROM customers`, want: advMasked},
	{name: "xmlagg", sql: `SELECT xmlagg(xmlelement(name s, ssn) ORDER BY id) FROM customers`, want: advMasked},
	{name: "whole-row-text", sql: `SELECT c::text, ROW(c.*)::text FROM customers c`, want: advMasked},
	{name: "whole-row-unaliased", sql: `SELECT customers, customers::text FROM customers`, want: advMasked},
	{name: "whole-row-expanded", sql: `SELECT (c).* FROM customers c`, want: advMasked},
	{name: "whole-row-predicate", sql: `SELECT count(*) FROM customers c WHERE c::text LIKE '%CANARY%' OR c::text ILIKE '%canary.person%'`, want: advMasked},
	{name: "array-constructors", sql: `SELECT ARRAY[ssn, email], ARRAY(SELECT ssn FROM customers ORDER BY id) FROM customers`, want: advMasked},

	// --- CTEs, sub-queries, LATERAL, set operations.
	{name: "cte", sql: `WITH x AS (SELECT * FROM customers) SELECT ssn, email FROM x`, want: advMasked},
	{name: "cte-named-like-table", sql: `WITH customers AS (SELECT * FROM customers) SELECT * FROM customers`, want: advMasked},
	{name: "cte-materialized", sql: `WITH x AS MATERIALIZED (SELECT ssn, email FROM customers) SELECT * FROM x`, want: advMasked},
	{name: "cte-recursive", sql: `WITH RECURSIVE r(n, s) AS (SELECT 1, ssn::text FROM customers WHERE id = 1 UNION ALL SELECT n + 1, substr(s, 2) FROM r WHERE n < 20) SELECT * FROM r`, want: advMasked},
	{name: "cte-recursive-named-like-table", sql: `WITH RECURSIVE customers(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM customers WHERE n < 3) SELECT n, c.ssn FROM customers, public.customers c`, want: advMasked},
	{name: "cte-scope-does-not-leak-out", sql: `SELECT a.ssn AS fake, b.ssn FROM (WITH customers AS (SELECT 'fake'::text AS ssn) SELECT ssn FROM customers) a, LATERAL (SELECT ssn FROM customers ORDER BY id LIMIT 1) b`, want: advMasked},
	{name: "cte-in-sublink-scope", sql: `SELECT (WITH customers AS (SELECT 'x'::text AS ssn) SELECT ssn FROM customers), (SELECT max(ssn) FROM customers)`, want: advMasked},
	{name: "cte-union-branch-scope", sql: `(WITH customers AS (SELECT 'fake'::varchar AS ssn) SELECT ssn FROM customers) UNION ALL (SELECT ssn FROM customers)`, want: advMasked},
	{name: "scalar-subquery", sql: `SELECT (SELECT ssn FROM customers WHERE id = 1), (SELECT max(email) FROM customers)`, want: advMasked},
	{name: "exists-in-oracle", sql: `SELECT EXISTS (SELECT 1 FROM customers WHERE ssn = 'CANARY-SSN-918273645'), 'CANARY-SSN-918273645' IN (SELECT ssn FROM customers), EXISTS (SELECT FROM customers WHERE email LIKE 'canary.%')`, want: advMasked},
	{name: "lateral", sql: `SELECT p.id, l.s FROM (VALUES (1), (2)) AS p(id), LATERAL (SELECT ssn AS s FROM customers c WHERE c.id = p.id) AS l`, want: advMasked},
	{name: "lateral-unnest", sql: `SELECT x FROM customers c, LATERAL unnest(ARRAY[c.ssn, c.email]) AS x`, want: advMasked},
	{name: "union", sql: `SELECT ssn FROM customers UNION SELECT email FROM customers`, want: advMasked},
	{name: "intersect-except", sql: `(SELECT ssn FROM customers INTERSECT SELECT ssn FROM customers) EXCEPT SELECT 'CANARY-SSN-918273645'`, want: advMasked},
	{name: "values-sublink", sql: `VALUES ((SELECT ssn FROM customers WHERE id = 1)), ((SELECT email FROM customers WHERE id = 1))`, want: advMasked},
	{name: "sublink-in-limit", sql: `SELECT id FROM customers ORDER BY id LIMIT (SELECT length(ssn) - 18 FROM customers WHERE id = 1)`, want: advMasked, ordered: true},
	{name: "for-update", sql: `SELECT ssn, email FROM customers WHERE id = 1 FOR UPDATE`, want: advMasked, paths: []advPath{pathSimple, pathExtText, pathExtBinary, pathPrepare, pathCursor, pathMulti}},
	{name: "inheritance-star-syntax", sql: `SELECT ssn FROM customers*`, want: advMasked},
	{name: "catalog-qualified-table", sql: `SELECT ssn FROM adv.public.customers`, want: advRefused},
	{name: "jsonb-populate-record", sql: `SELECT (jsonb_populate_record(NULL::customers, to_jsonb(c))).ssn FROM customers c`, want: advMasked},
	{name: "xmltable-passing", sql: `SELECT * FROM XMLTABLE('/r/s' PASSING (SELECT xmlelement(name r, xmlagg(xmlelement(name s, ssn) ORDER BY id)) FROM customers) COLUMNS s text PATH '.')`, want: advMasked},
	{name: "rows-from", sql: `SELECT * FROM ROWS FROM (unnest((SELECT array_agg(ssn ORDER BY id) FROM customers)), generate_series(1, 2))`, want: advMasked},
	{name: "from-subselect", sql: `SELECT * FROM (SELECT * FROM customers) AS s`, want: advMasked},
	{name: "self-join", sql: `SELECT a.ssn, b.email FROM customers a JOIN customers b ON a.id = b.id`, want: advMasked},
	{name: "natural-join-shadow", sql: `SELECT * FROM customers c NATURAL JOIN shadow.customers s`, want: advMasked},
	{name: "join-using-ssn", sql: `SELECT count(*) FROM customers c JOIN shadow.customers s USING (ssn)`, want: advMasked},
	{name: "sublink-in-unprotected-write", sql: `INSERT INTO probe VALUES (9, 'x') RETURNING (SELECT ssn FROM customers WHERE id = 1)`, want: advMasked, tx: rollback, paths: dmlReturningPaths},

	// --- Aggregates and window functions.
	{name: "string-agg", sql: `SELECT string_agg(ssn, ',' ORDER BY id), string_agg(email, ',' ORDER BY id) FROM customers`, want: advMasked},
	{name: "min-max-agg", sql: `SELECT array_agg(ssn ORDER BY ssn), min(ssn), max(ssn), min(salary), max(salary), min(birth_date), max(birth_date), avg(salary), sum(salary) FROM customers`, want: advMasked},
	{name: "window-functions", sql: `SELECT id, first_value(ssn) OVER (ORDER BY ssn), last_value(email) OVER (ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING), lag(ssn) OVER (ORDER BY id), rank() OVER (ORDER BY salary) FROM customers`, want: advMasked},
	{name: "ordered-set-aggregates", sql: `SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY salary), mode() WITHIN GROUP (ORDER BY birth_date), percentile_cont(0.5) WITHIN GROUP (ORDER BY salary) FROM customers`, want: advMasked},
	{name: "filtered-aggregates", sql: `SELECT bool_or(ssn LIKE 'CANARY%'), count(*) FILTER (WHERE email LIKE 'canary%'), every(salary < 980000) FROM customers`, want: advMasked},
	{name: "grouping-sets", sql: `SELECT substr(ssn, 1, 3), city, count(*) FROM customers GROUP BY GROUPING SETS ((substr(ssn, 1, 3)), (city))`, want: advMasked},

	// --- Predicate oracles: the answer must be the one masked data gives.
	{name: "oracle-like-prefix", sql: `SELECT count(*) FROM customers WHERE ssn LIKE 'CANARY%'`, want: advMasked},
	{name: "oracle-like-digits", sql: `SELECT count(*) FROM customers WHERE ssn LIKE '%9182%' OR ssn LIKE '%-SSN-%'`, want: advMasked},
	{name: "oracle-equality", sql: `SELECT id FROM customers WHERE ssn = 'CANARY-SSN-918273645' OR email = 'canary.person@leak.example'`, want: advMasked},
	{name: "oracle-join-on-ssn", sql: `SELECT count(*) FROM customers c JOIN (VALUES ('CANARY-SSN-918273645')) AS v(s) ON v.s = c.ssn`, want: advMasked},
	{name: "oracle-order-by-ssn", sql: `SELECT id FROM customers ORDER BY ssn, id`, want: advMasked, ordered: true},
	{name: "oracle-order-by-day-of-year", sql: `SELECT id FROM customers ORDER BY extract(doy FROM birth_date), id`, want: advMasked, ordered: true},
	{name: "oracle-order-by-cents", sql: `SELECT id FROM customers ORDER BY salary % 10000 DESC NULLS LAST, id`, want: advMasked, ordered: true},
	{name: "oracle-group-by", sql: `SELECT substr(ssn, 1, 6), count(*) FROM customers GROUP BY 1`, want: advMasked},
	{name: "oracle-having", sql: `SELECT city, count(*) FROM customers GROUP BY city HAVING max(ssn) LIKE 'CANARY%' OR min(email) LIKE 'canary%'`, want: advMasked},
	{name: "oracle-distinct-on", sql: `SELECT DISTINCT ON (substr(ssn, 1, 1)) id FROM customers ORDER BY substr(ssn, 1, 1), id`, want: advMasked, ordered: true},
	{name: "oracle-case-in-where", sql: `SELECT id FROM customers WHERE CASE WHEN substr(ssn, 12, 1) = '9' THEN true ELSE false END`, want: advMasked},
	{name: "oracle-regex", sql: `SELECT count(*) FROM customers WHERE ssn ~ '^[A-Z]+-SSN-9' OR email ~* '^canary'`, want: advMasked},
	{name: "oracle-range", sql: `SELECT count(*) FROM customers WHERE salary BETWEEN 987654 AND 987655 OR salary::int = 987654`, want: advMasked},
	{name: "oracle-date", sql: `SELECT count(*) FROM customers WHERE birth_date = DATE '1971-03-14' OR extract(month FROM birth_date) = 3`, want: advMasked},
	{name: "oracle-binary-search", sql: `SELECT count(*) FROM customers WHERE ssn > 'CANARY-SSN-5' AND ssn < 'CANARY-SSN-A'`, want: advMasked},
	{name: "oracle-position", sql: `SELECT position('9182' IN ssn), strpos(email, 'canary'), length(ssn), octet_length(email) FROM customers`, want: advMasked},
	{name: "oracle-correlated", sql: `SELECT id FROM customers c WHERE EXISTS (SELECT 1 FROM (VALUES ('9')) AS v(d) WHERE substr(c.ssn, 12, 1) = v.d)`, want: advMasked},
	{name: "oracle-row-compare", sql: `SELECT count(*) FROM customers WHERE (ssn, email) > ('CANARY', 'c')`, want: advMasked},
	{name: "oracle-any-array", sql: `SELECT count(*) FROM customers WHERE ssn = ANY (ARRAY['CANARY-SSN-918273645', 'x'])`, want: advMasked},
	{name: "oracle-division-error", sql: `SELECT 1 / (CASE WHEN ssn LIKE 'CANARY%' THEN 0 ELSE 1 END) FROM customers`, want: advMasked},
	{name: "oracle-cast-error", sql: `SELECT CASE WHEN email LIKE 'canary.person%' THEN ssn::int ELSE 0 END FROM customers`, want: advMasked},
	{name: "oracle-param-equality", sql: `SELECT count(*) FROM customers WHERE ssn = $1 OR email = $2`, params: []string{advCanarySSN, advCanaryEmail}, want: advMasked, paths: paramPaths},
	{name: "oracle-param-like", sql: `SELECT count(*) FROM customers WHERE ssn LIKE $1`, params: []string{"CANARY%"}, want: advMasked, paths: paramPaths},

	// --- Error messages that quote values.
	{name: "error-cast-int", sql: `SELECT ssn::int FROM customers`, want: advMasked, refErr: "22P02"},
	{name: "error-cast-numeric", sql: `SELECT ssn::numeric FROM customers WHERE id = 1`, want: advMasked, refErr: "22P02"},
	{name: "error-cast-date", sql: `SELECT email::date FROM customers WHERE id = 1`, want: advMasked, refErr: "22007"},
	{name: "error-cast-jsonb", sql: `SELECT email::jsonb FROM customers WHERE id = 1`, want: advMasked, refErr: "22P02"},
	{name: "error-division-by-length", sql: `SELECT 1 / (length(ssn) - 20) FROM customers WHERE id = 1`, want: advMasked, refErr: "22012"},
	{name: "error-make-date", sql: `SELECT make_date(2000, extract(month FROM birth_date)::int, extract(day FROM birth_date)::int + 40) FROM customers WHERE id = 1`, want: advMasked, refErr: "22008"},
	{name: "error-xml-parse", sql: `SELECT xmlparse(content '<a>' || ssn || '</b>') FROM customers WHERE id = 1`, want: advMasked, refErr: "2200N"},
	{name: "error-regex", sql: `SELECT regexp_match('x', email) FROM customers WHERE id = 1`, want: advMasked, refErr: "2201B"},
	{name: "error-unique-violation-detail", sql: `INSERT INTO probe_u (v) SELECT ssn FROM customers UNION ALL SELECT ssn FROM customers WHERE id = 1`, want: advMasked, refErr: "23505", tx: rollback, paths: dmlPaths},
	{name: "error-check-violation-oracle", sql: `INSERT INTO probe_chk (v) SELECT ssn FROM customers WHERE id = 1`, want: advMasked, tx: rollback, paths: dmlPaths},
	{name: "error-check-violation-detail", sql: `INSERT INTO probe_chk (v) SELECT 'CANARY' || email FROM customers WHERE id = 1`, want: advMasked, refErr: "23514", tx: rollback, paths: dmlPaths},

	// --- DML and RETURNING on the protected table.
	{name: "update-returning-ssn", sql: `UPDATE customers SET name = name WHERE id = 1 RETURNING ssn`, want: advRefused, tx: rollback, paths: dmlReturningPaths},
	{name: "update-returning-star", sql: `UPDATE customers SET name = name WHERE id = 1 RETURNING *`, want: advRefused, tx: rollback, paths: dmlReturningPaths},
	{name: "delete-returning-star", sql: `DELETE FROM customers WHERE id = 1 RETURNING *`, want: advRefused, tx: rollback, paths: dmlReturningPaths},
	{name: "writable-cte-returning-star", sql: `WITH d AS (DELETE FROM customers WHERE id = 1 RETURNING *) SELECT ssn, email, secret_note FROM d`, want: advRefused, tx: rollback, paths: dmlReturningPaths},
	{name: "update-returning-table-star", sql: `UPDATE customers SET name = name WHERE id = 1 RETURNING customers.*`, want: advRefused, tx: rollback, paths: dmlReturningPaths},
	{name: "update-returning-alias-star", sql: `UPDATE customers c SET name = name WHERE c.id = 1 RETURNING c.*`, want: advRefused, tx: rollback, paths: dmlReturningPaths},
	{name: "update-returning-whole-row", sql: `UPDATE customers c SET name = name WHERE id = 1 RETURNING c`, want: advRefused, tx: rollback, paths: dmlReturningPaths},
	{name: "update-returning-row-to-json", sql: `UPDATE customers SET name = name WHERE id = 1 RETURNING row_to_json(customers)`, want: advRefused, tx: rollback, paths: dmlReturningPaths},
	{name: "update-where-ssn", sql: `UPDATE customers SET name = 'x' WHERE ssn = 'CANARY-SSN-918273645'`, want: advRefused, tx: rollback, paths: dmlPaths},
	{name: "update-where-like", sql: `UPDATE customers SET name = name WHERE ssn LIKE 'CANARY%'`, want: advRefused, tx: rollback, paths: dmlPaths},
	{name: "update-set-from-masked", sql: `UPDATE customers SET name = ssn WHERE id = 1`, want: advRefused, tx: rollback, paths: dmlPaths},
	{name: "update-whole-row-where", sql: `UPDATE customers SET name = name WHERE customers::text LIKE '%CANARY%'`, want: advRefused, tx: rollback, paths: dmlPaths},
	{name: "delete-where-ssn", sql: `DELETE FROM customers WHERE ssn LIKE 'CANARY%'`, want: advRefused, tx: rollback, paths: dmlPaths},
	{name: "delete-where-deny", sql: `DELETE FROM customers WHERE secret_note LIKE 'CANARY-DENY%'`, want: advRefused, tx: rollback, paths: dmlPaths},
	{name: "insert-returning-ssn", sql: `INSERT INTO customers (id, name, ssn) VALUES (100, 'n', 'X-1') RETURNING ssn`, want: advRefused, tx: rollback, paths: dmlReturningPaths},
	{name: "insert-on-conflict", sql: `INSERT INTO customers (id, name) VALUES (1, 'n') ON CONFLICT DO NOTHING`, want: advRefused, tx: rollback, paths: dmlPaths},
	{name: "insert-on-conflict-update", sql: `INSERT INTO customers (id, name) VALUES (1, 'n') ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name RETURNING *`, want: advRefused, tx: rollback, paths: dmlReturningPaths},
	{name: "merge", sql: `MERGE INTO customers c USING probe p ON c.id = p.id WHEN MATCHED THEN UPDATE SET name = p.v`, want: advRefused, tx: rollback, paths: utilityPaths},
	{name: "oracle-unique-insert", sql: `INSERT INTO customers (id, name, ssn) VALUES (100, 'n', 'CANARY-SSN-918273645')`, want: advRefused, tx: rollback, paths: dmlPaths},
	{name: "oracle-unique-update", sql: `UPDATE customers SET ssn = 'CANARY-SSN-918273645' WHERE id = 2`, want: advRefused, tx: rollback, paths: dmlPaths},
	// A foreign key into a row-filtered table checks the rows the filter
	// hides (customer 1 for adv_marketing).
	{name: "oracle-foreign-key-row-filtered", login: "adv_marketing", sql: `INSERT INTO probe_cust (customer_id) VALUES (1)`, want: advRefused, tx: rollback, paths: dmlPaths},
	// A constraint checks the written row's raw masked values.
	// (update-without-reading below writes city, which no constraint uses
	// with a masked column: it still passes.)
	{name: "oracle-check-constraint", sql: `UPDATE customers SET name = 'Probe' WHERE id = 1`, want: advRefused, tx: rollback, paths: dmlPaths},
	{name: "oracle-foreign-key", sql: `INSERT INTO probe_fk (ssn) VALUES ('CANARY-SSN-918273645')`, want: advRefused, refErr: "23503", tx: rollback, paths: dmlPaths},
	{name: "update-without-reading", sql: `UPDATE customers SET city = 'Nowhere' WHERE id = 1`, want: advMasked, tx: rollback, paths: dmlPaths},
	{name: "update-returning-unclassified", sql: `UPDATE customers SET city = city WHERE id = 1 RETURNING id, name, city`, want: advMasked, tx: rollback, paths: dmlReturningPaths},
	{name: "delete-by-id", sql: `DELETE FROM customers WHERE id = 4`, want: advMasked, tx: rollback, paths: dmlPaths},
	{name: "update-unprotected-from-masked", sql: `UPDATE probe SET v = c.ssn FROM customers c WHERE c.id = 1 AND probe.id = 1 RETURNING probe.v`, want: advMasked, tx: rollback, paths: dmlReturningPaths},
	{name: "insert-on-conflict-unprotected", sql: `INSERT INTO probe_u SELECT ssn FROM customers WHERE id = 1 ON CONFLICT (v) DO UPDATE SET v = EXCLUDED.v RETURNING *`, want: advMasked, tx: rollback, paths: dmlReturningPaths},
	{name: "explain-analyze-update-protected", sql: `EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) UPDATE customers SET name = name WHERE id = 1`, want: advRefused, tx: rollback, paths: utilityPaths},
	{name: "insert-select-masked", sql: `INSERT INTO probe (id, v) SELECT id + 10, ssn FROM customers RETURNING *`, want: advMasked, tx: rollback, paths: dmlReturningPaths},

	// --- COPY.
	{name: "copy-table", sql: `COPY customers TO STDOUT`, want: advMasked, paths: copyPaths},
	{name: "copy-columns", sql: `COPY customers (ssn, email, salary, birth_date) TO STDOUT`, want: advMasked, paths: copyPaths},
	{name: "copy-deny-column", sql: `COPY customers (id, secret_note) TO STDOUT`, want: advRefused, paths: copyPaths},
	{name: "copy-query-csv", sql: `COPY (SELECT * FROM customers ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)`, want: advMasked, paths: copyPaths, ordered: true},
	{name: "copy-binary", sql: `COPY customers TO STDOUT (FORMAT binary)`, want: advMasked, paths: copyPaths, ordered: true},
	{name: "copy-encoding", sql: `COPY customers TO STDOUT WITH (FORMAT csv, ENCODING 'LATIN1', FORCE_QUOTE *)`, want: advMasked, paths: copyPaths},
	{name: "copy-partition", sql: `COPY events_2024 TO STDOUT`, want: advMasked, paths: copyPaths},
	{name: "copy-partitioned-parent", sql: `COPY events TO STDOUT`, refSQL: `COPY (SELECT * FROM events) TO STDOUT`, want: advMasked, paths: []advPath{pathCopyStatement}},
	{name: "copy-to-file", sql: `COPY customers TO '/tmp/pgveil_adv_leak.txt'`, want: advRefused, paths: utilityPaths},
	{name: "copy-query-to-file", sql: `COPY (SELECT ssn FROM customers) TO '/tmp/pgveil_adv_leak2.txt'`, want: advRefused, paths: utilityPaths},
	{name: "copy-to-program", sql: `COPY customers TO PROGRAM 'cat > /tmp/pgveil_adv_leak3.txt'`, want: advRefused, paths: utilityPaths},
	{name: "copy-from-stdin-protected", sql: `COPY customers FROM STDIN`, want: advRefused, paths: []advPath{pathSimple, pathMulti}},
	{name: "copy-unclassified-view", sql: `COPY customer_names TO STDOUT`, want: advRefused, paths: copyPaths},

	// --- PREPARE/EXECUTE and cursors beyond the standard paths.
	{name: "sql-prepare-param", pre: []advStep{advQ(`PREPARE adv_q(text) AS SELECT count(*), min(ssn) FROM customers WHERE ssn = $1 OR ssn LIKE 'CANARY%'`)}, sql: `EXECUTE adv_q('CANARY-SSN-918273645')`, want: advMasked, paths: utilityPaths},
	{name: "cursor-scroll-backward", pre: []advStep{advQ(`BEGIN`), advQ(`DECLARE adv_s SCROLL CURSOR FOR SELECT ssn, email FROM customers ORDER BY id`), advQ(`FETCH LAST FROM adv_s`)}, sql: `FETCH BACKWARD ALL FROM adv_s`, want: advMasked, paths: utilityPaths, ordered: true},
	{name: "cursor-with-hold", pre: []advStep{advQ(`DECLARE adv_h CURSOR WITH HOLD FOR SELECT * FROM customers ORDER BY id`)}, sql: `FETCH ALL FROM adv_h`, want: advMasked, paths: utilityPaths, ordered: true},
	{name: "sql-prepare-function-re-resolved", pre: []advStep{advQ(`PREPARE adv_l AS SELECT lower('X') AS v`), advQ(`SET search_path = shadow, pg_catalog, public`)}, sql: `EXECUTE adv_l`, want: advRefusedOrRows(`("x")`), paths: utilityPaths},
	{name: "cursor-to-xml", pre: []advStep{advQ(`BEGIN`), advQ(`DECLARE adv_x CURSOR FOR SELECT * FROM customers`)}, sql: `SELECT cursor_to_xml('adv_x', 10, true, false, '')`, want: advRefused, paths: utilityPaths},

	// --- Procedural code and dangerous functions.
	{name: "do-block", sql: `DO $$BEGIN RAISE NOTICE '%', (SELECT ssn FROM customers WHERE id = 1); END$$`, want: advRefused, paths: utilityPaths},
	{name: "call", sql: `CALL adv_no_such_procedure()`, want: advRefused, paths: utilityPaths},
	{name: "create-function", sql: `CREATE FUNCTION adv_f() RETURNS text LANGUAGE sql AS 'SELECT ssn FROM customers WHERE id = 1'`, want: advRefused, paths: utilityPaths},
	{name: "create-temp-table-as", sql: `CREATE TEMP TABLE adv_t AS SELECT ssn FROM customers`, want: advRefused, paths: utilityPaths},
	{name: "create-temp-view", sql: `CREATE TEMP VIEW adv_v AS SELECT ssn FROM customers`, want: advRefused, paths: utilityPaths},
	{name: "select-into", sql: `SELECT ssn INTO TEMP adv_t2 FROM customers`, want: advRefused, paths: utilityPaths},
	{name: "query-to-xml", sql: `SELECT query_to_xml('SELECT ssn FROM customers', true, false, '')`, want: advRefused},
	{name: "query-to-xml-qualified", sql: `SELECT pg_catalog.query_to_xml('SELECT ssn FROM customers', true, false, '')`, want: advRefused},
	{name: "table-to-xml", sql: `SELECT table_to_xml('customers', true, false, '')`, want: advRefused},
	{name: "ts-stat", sql: `SELECT * FROM ts_stat('SELECT to_tsvector(''simple'', ssn) FROM customers')`, want: advRefused},
	{name: "pg-read-file", sql: `SELECT pg_read_file('postgresql.conf')`, want: advRefused},
	{name: "pg-read-binary-file-qualified", sql: `SELECT pg_catalog.pg_read_binary_file('postgresql.conf')`, want: advRefused},
	{name: "quoted-upper-case-function", sql: `SELECT "PG_READ_FILE"('postgresql.conf')`, want: advRefused}, // no such function: refused as unknown (rule catalog)
	// (expr).name calls function name on expr when no field is called so.
	{name: "attribute-call-parenthesised", sql: `SELECT (p).peek_probe FROM probe p`, want: advRefused},
	{name: "attribute-call-row-constructor", sql: `SELECT (ROW(1, 'x')::probe).peek_probe`, want: advRefused},
	{name: "attribute-call-scalar-shadowed", pre: []advStep{advQ(`SET search_path = shadow, pg_catalog, public`)}, sql: `SELECT ('X'::text).lower`, want: advRefused},
	// pg_settings' update rule calls set_config behind the proxy's back.
	{name: "update-pg-settings-search-path", sql: `UPDATE pg_settings SET setting = 'shadow, public' WHERE name = 'search_path'`, want: advRefused, tx: rollback, paths: dmlPaths},
	{name: "lo-import", sql: `SELECT lo_import('/etc/hostname')`, want: advRefused},
	{name: "lo-from-bytea", sql: `SELECT lo_from_bytea(0, ssn::bytea) FROM customers`, want: advRefused},
	{name: "dblink", sql: `SELECT * FROM dblink('dbname=adv', 'SELECT ssn FROM customers') AS t(s text)`, want: advRefused},
	{name: "set-config-search-path", pre: []advStep{advQ(`SELECT set_config('search_path', 'shadow, public', false)`)}, sql: `SELECT * FROM customers`, want: advMasked},
	{name: "set-config-pinned", sql: `SELECT set_config('standard_conforming_strings', 'off', false)`, want: advRefused},
	{name: "set-config-computed", sql: `SELECT set_config('search_path', current_user || ', public', false)`, want: advRefused},
	{name: "set-config-with-other-columns", sql: `SELECT set_config('search_path', 'shadow', false), ssn FROM customers`, want: advRefused},
	{name: "set-config-local-outside-tx", pre: []advStep{advQ(`SELECT set_config('search_path', 'nowhere', true)`)}, sql: `SELECT * FROM events_2024`, want: advMasked},
	{name: "current-setting", sql: `SELECT current_setting('search_path'), current_setting('standard_conforming_strings')`, want: advMasked},
	{name: "user-function", sql: `SELECT peek_ssn(1)`, want: advRefused},
	{name: "user-function-qualified", sql: `SELECT public.peek_ssn(1)`, want: advRefused},
	{name: "user-function-in-from", sql: `SELECT * FROM peek_ssn(1)`, want: advRefused},
	{name: "user-function-three-part-name", sql: `SELECT adv.public.peek_ssn(1)`, want: advRefused},
	{name: "user-function-row-argument", sql: `SELECT peek_probe(p) FROM probe p`, want: advRefused},
	{name: "user-operator", sql: `SELECT ### 1`, want: advRefused},
	{name: "user-operator-explicit", sql: `SELECT OPERATOR(public.###) 1`, want: advRefused},
	{name: "function-attribute-notation", sql: `SELECT p.peek_probe FROM probe p`, want: advRefused},
	// Casts and domain checks run user functions without naming them.
	{name: "cast-user-function-explicit", sql: `SELECT t::text FROM probe_t`, want: advRefused},
	{name: "cast-user-function-cast-syntax", sql: `SELECT CAST(ROW(1)::peek_t AS text)`, want: advRefused},
	{name: "cast-user-function-implicit", sql: `SELECT upper(t) FROM probe_t`, want: advRefused},
	{name: "cast-user-function-assignment", sql: `INSERT INTO probe_t (id, t) VALUES (2, 1)`, want: advRefused, tx: rollback, paths: dmlPaths},
	{name: "cast-domain-check", sql: `SELECT 'x'::peek_d`, want: advRefused},
	{name: "cast-domain-check-insert", sql: `INSERT INTO probe_d VALUES ('x')`, want: advRefused, tx: rollback, paths: dmlPaths},
	{name: "cast-builtin-with-user-casts-present", sql: `SELECT ssn::text, CAST(salary AS int), id::text FROM customers ORDER BY id`, want: advMasked, ordered: true},

	// --- Identity: SET ROLE / SESSION AUTHORIZATION.
	{name: "set-role-not-member", sql: `SET ROLE adv_dpo`, want: advMasked, refErr: "42501", paths: utilityPaths},
	{name: "set-role-failed-then-read", pre: []advStep{advQ(`SET ROLE adv_dpo`)}, sql: `SELECT ssn, email FROM customers ORDER BY id`, want: advMasked, ordered: true},
	{name: "set-session-authorization", sql: `SET SESSION AUTHORIZATION adv_dpo`, want: advRefused, paths: utilityPaths},
	{name: "reset-session-authorization", sql: `RESET SESSION AUTHORIZATION`, want: advRefused, paths: utilityPaths},
	{name: "set-role-member-then-read", pre: []advStep{advQ(`SET ROLE adv_team`)}, sql: `SELECT ssn, email FROM customers ORDER BY id`, want: advMasked, ordered: true},
	{name: "set-role-user-schema", pre: []advStep{advQ(`SET ROLE adv_team`)}, sql: `SELECT * FROM events_team`, want: advMasked},

	// --- search_path shadowing and desynchronisation.
	{name: "search-path-shadow-first", pre: []advStep{advQ(`SET search_path = shadow, public`)}, sql: `SELECT * FROM customers`, want: advMasked},
	{name: "search-path-public-first", pre: []advStep{advQ(`SET search_path = public, shadow`)}, sql: `SELECT * FROM customers`, want: advMasked},
	{name: "search-path-other-roles-view", pre: []advStep{advQ(`SET search_path = evil, public`)}, sql: `SELECT * FROM customers`, want: advRefused},
	{name: "other-roles-view-qualified", sql: `SELECT ssn FROM evil.customers`, want: advRefused},
	{name: "search-path-in-transaction", tx: rollback, pre: []advStep{advQ(`BEGIN`), advQ(`SET search_path = shadow, public`)}, sql: `SELECT * FROM customers`, want: advMasked},
	{name: "search-path-rolled-back", pre: []advStep{advQ(`BEGIN`), advQ(`SET search_path = nowhere`), advQ(`ROLLBACK`)}, sql: `SELECT * FROM events_2024`, want: advMasked},
	{name: "search-path-savepoint-rolled-back", pre: []advStep{advQ(`BEGIN`), advQ(`SAVEPOINT a`), advQ(`SET search_path = nowhere`), advQ(`ROLLBACK TO SAVEPOINT a`)}, sql: `SELECT * FROM events_2024`, want: advMasked, tx: rollback},
	{name: "search-path-failed-implicit-tx", pre: []advStep{advQ(`SET search_path = nowhere; SELECT 1/0`)}, sql: `SELECT * FROM events_2024`, want: advMasked},
	// A change and a read in one message: the server resolves the read
	// under the new path.
	{name: "search-path-and-read-in-one-query", sql: `SET search_path = shadow, public; SELECT * FROM customers`, want: advMasked, paths: []advPath{pathSimple, pathMulti}},
	{name: "search-path-and-partition-in-one-query", pre: []advStep{advQ(`SET search_path = nowhere`)}, sql: `SET search_path = public; SELECT * FROM events_2024`, want: advMasked, paths: []advPath{pathSimple, pathMulti}},
	{name: "search-path-prepared-set-executed-later", pre: []advStep{advQ(`SET search_path = nowhere`), advParseOnly(`SET search_path = public`), advQ(`SELECT 1`), advExecParsed()}, sql: `SELECT * FROM events_2024`, want: advMasked},
	{name: "search-path-reset-all", pre: []advStep{advQ(`SET search_path = shadow`), advQ(`RESET ALL`)}, sql: `SELECT * FROM customers`, want: advMasked},
	{name: "search-path-discard-all", pre: []advStep{advQ(`SET search_path = shadow`), advQ(`DISCARD ALL`)}, sql: `SELECT * FROM customers`, want: advMasked},
	{name: "search-path-at-startup", startup: map[string]string{"options": "-c search_path=shadow,public"}, sql: `SELECT * FROM customers`, want: advMasked},
	{name: "search-path-parse-only", pre: []advStep{advParseOnly(`SET search_path = nowhere`)}, sql: `SELECT * FROM events_2024`, want: advMasked},
	{name: "search-path-set-local-outside-tx", pre: []advStep{advQ(`SET LOCAL search_path = nowhere`)}, sql: `SELECT * FROM events_2024`, want: advMasked},
	{name: "search-path-from-current", pre: []advStep{advQ(`SET search_path = shadow, public`), advQ(`SET search_path FROM CURRENT`)}, sql: `SELECT * FROM events_old`, want: advMasked},
	{name: "search-path-pipelined-rollback", pre: []advStep{advPipeline(`BEGIN`, `SET search_path = nowhere`, `ROLLBACK`)}, sql: `SELECT * FROM events_2024`, want: advMasked},

	// --- Quoting and escape tricks.
	{name: "quoted-identifiers", sql: `SELECT "ssn", "email" FROM "public"."customers"`, want: advMasked},
	{name: "quoted-upper-case-table", sql: `SELECT ssn FROM "CUSTOMERS"`, want: advRefused, refErr: "42P01"},
	{name: "unicode-escaped-table", sql: `SELECT ssn FROM U&"\0063ustomers"`, want: advMasked},
	{name: "unicode-uescape-column", sql: `SELECT U&"!0073sn" UESCAPE '!' FROM customers`, want: advMasked},
	{name: "homoglyph-table", sql: `SELECT ssn FROM "сustomers"`, want: advRefused, refErr: "42P01"},
	{name: "comments-between-tokens", sql: "SELECT/**/ssn/* x */FROM--c\ncustomers", want: advMasked},
	{name: "nested-comments", sql: `SELECT 1 /* /* nested */ , ssn */ , ssn FROM customers`, want: advMasked},
	{name: "dollar-quoting", sql: `SELECT $q$;SELECT ssn FROM customers;$q$ AS t, ssn FROM customers`, want: advMasked},
	{name: "e-string", sql: `SELECT count(*) FROM customers WHERE ssn LIKE E'CANARY\x25' OR email LIKE E'canary\x2e%'`, want: advMasked},
	{name: "backslash-in-standard-string", sql: `SELECT 'a\' AS a, ssn FROM customers`, want: advMasked},
	{name: "unicode-string", sql: `SELECT U&'\0041' || ssn FROM customers`, want: advMasked},
	{name: "set-standard-conforming-strings-off", sql: `SET standard_conforming_strings = off`, want: advRefused, paths: utilityPaths},
	{name: "set-client-encoding", sql: `SET client_encoding = 'LATIN1'`, want: advRefused, paths: utilityPaths},
	{name: "set-names", sql: `SET NAMES 'SQL_ASCII'`, want: advRefused, paths: utilityPaths},
	{name: "startup-client-encoding", startup: map[string]string{"client_encoding": "LATIN1"}, sql: `SELECT 1`, want: advConnectRefused, paths: []advPath{pathSimple}},
	{name: "startup-standard-conforming-strings-off", startup: map[string]string{"options": "-c standard_conforming_strings=off"}, sql: `SELECT 1`, want: advConnectRefused, paths: []advPath{pathSimple}},

	// --- Catalogs and statistics (ANALYZE ran at setup).
	{name: "pg-stats", sql: `SELECT attname, most_common_vals::text, histogram_bounds::text FROM pg_stats WHERE tablename = 'customers'`, want: advRefused},
	{name: "pg-stats-qualified", sql: `SELECT histogram_bounds::text FROM pg_catalog.pg_stats WHERE attname = 'ssn'`, want: advRefused},
	{name: "pg-stats-sublink", sql: `SELECT (SELECT histogram_bounds::text FROM pg_stats WHERE attname = 'ssn' LIMIT 1)`, want: advRefused},
	{name: "pg-stats-cte", sql: `WITH s AS (SELECT * FROM pg_stats) SELECT count(*) FROM s`, want: advRefused},
	{name: "pg-stats-join", sql: `SELECT 1 FROM probe JOIN pg_stats ON true LIMIT 1`, want: advRefused},
	{name: "statistics-view-by-admin", sql: `SELECT * FROM table_stats WHERE tablename = 'customers'`, want: advRefused},
	{name: "pg-stats-ext", sql: `SELECT most_common_vals::text FROM pg_stats_ext`, want: advRefused},
	{name: "pg-stats-ext-exprs", sql: `SELECT * FROM pg_stats_ext_exprs`, want: advRefused},
	{name: "pg-statistic", sql: `SELECT stavalues1::text FROM pg_statistic`, want: advRefused},
	{name: "system-columns", sql: `SELECT ctid, xmin, ssn FROM customers`, want: advCode("42703")},
	{name: "tableoid", sql: `SELECT tableoid::regclass, ssn FROM customers`, want: advCode("42703")},
	{name: "tablesample", sql: `SELECT ssn FROM customers TABLESAMPLE SYSTEM (100)`, want: advRefused},

	// --- EXPLAIN.
	{name: "explain", sql: `EXPLAIN SELECT * FROM customers`, want: advRefused, paths: utilityPaths},
	{name: "explain-analyze-where-ssn", sql: `EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM customers WHERE ssn = 'CANARY-SSN-918273645'`, want: advRefused, paths: utilityPaths},
	{name: "explain-sublink", sql: `EXPLAIN SELECT * FROM probe WHERE v IN (SELECT ssn FROM customers)`, want: advRefused, paths: utilityPaths},
	{name: "explain-execute", pre: []advStep{advQ(`PREPARE adv_e AS SELECT * FROM customers WHERE ssn LIKE 'CANARY%'`)}, sql: `EXPLAIN EXECUTE adv_e`, want: advRefused, paths: utilityPaths},
	{name: "explain-unprotected", sql: `EXPLAIN (COSTS OFF) SELECT * FROM probe WHERE v = 'p1'`, want: advMasked, paths: utilityPaths},

	// --- LISTEN/NOTIFY.
	{name: "listen", sql: `LISTEN adv_channel`, want: advRefused, paths: utilityPaths},
	{name: "notify", sql: `NOTIFY adv_channel, 'hello'`, want: advMasked, paths: utilityPaths},
	{name: "pg-notify-masked-value", sql: `SELECT pg_notify('adv_channel', ssn) FROM customers WHERE id = 1`, want: advMasked},

	// --- Other statements a masked session may not run.
	{name: "analyze", sql: `ANALYZE customers`, want: advRefused, paths: utilityPaths},
	{name: "lock", sql: `LOCK customers`, want: advRefused, tx: rollback, paths: utilityPaths},
	{name: "truncate", sql: `TRUNCATE probe`, want: advRefused, tx: rollback, paths: utilityPaths},
	{name: "grant", sql: `GRANT SELECT ON customers TO PUBLIC`, want: advRefused, paths: utilityPaths},
	{name: "alter-table", sql: `ALTER TABLE customers ADD COLUMN x int`, want: advRefused, paths: utilityPaths},
	{name: "show", sql: `SHOW search_path`, want: advMasked, paths: utilityPaths},

	// --- Deny-class column.
	{name: "deny-column", sql: `SELECT secret_note FROM customers`, want: advRefused},
	{name: "deny-column-qualified", sql: `SELECT c.secret_note FROM customers c`, want: advRefused},
	{name: "deny-in-where", sql: `SELECT id FROM customers WHERE secret_note IS NOT NULL`, want: advRefused},
	{name: "deny-in-using", sql: `SELECT count(*) FROM customers JOIN (VALUES ('CANARY-DENY-55501')) AS v(secret_note) USING (secret_note)`, want: advRefused},
	{name: "deny-in-order-by", sql: `SELECT id FROM customers ORDER BY secret_note`, want: advRefused},

	// --- Views, partitions, inheritance.
	{name: "partitioned-parent", sql: `SELECT * FROM events`, want: advMasked},
	{name: "partition", sql: `SELECT * FROM events_2024`, want: advMasked},
	{name: "partition-other-schema", sql: `SELECT * FROM shadow.events_old`, want: advMasked},
	{name: "only-partitioned-parent", sql: `SELECT * FROM ONLY events`, want: advMasked},
	{name: "classified-view", sql: `SELECT * FROM customer_contacts`, want: advMasked},
	{name: "unclassified-view", sql: `SELECT * FROM customer_names`, want: advRefused},
	{name: "materialized-view", sql: `SELECT * FROM customer_mv`, want: advRefused},
	{name: "inheritance-parent", sql: `SELECT * FROM staff`, want: advMasked},
	{name: "inheritance-child", sql: `SELECT * FROM staff_archive`, want: advMasked},
	{name: "new-partition-after-snapshot", setup: func(t *testing.T) {
		const ddl = `CREATE TABLE IF NOT EXISTS events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
			GRANT SELECT ON events_2026 TO adv_analyst; DELETE FROM events_2026; `
		advSuper(t, ddl+`INSERT INTO events VALUES (5, 'late.partition@leak.example', '2026-02-01');`,
			ddl+`INSERT INTO events VALUES (5, 'l***@leak.example', '2026-02-01');`)
	}, sql: `SELECT * FROM events_2026`, want: advRefused},
	{name: "new-view-after-snapshot", setup: func(t *testing.T) {
		const ddl = `CREATE OR REPLACE VIEW customer_late AS SELECT id, ssn, secret_note FROM customers; GRANT SELECT ON customer_late TO adv_analyst;`
		advSuper(t, ddl, ddl)
	}, sql: `SELECT * FROM customer_late`, want: advRefused},

	// --- Protocol-level shapes that fit the table.
	{name: "parse-two-statements", sql: `SELECT 1; SELECT ssn FROM customers`, want: advMasked, refErr: "42601", paths: []advPath{pathExtText, pathExtBinary}},
	{name: "huge-query", sql: `SELECT length('` + strings.Repeat("x", 16<<20) + `'), ssn FROM customers`, want: advMasked, paths: []advPath{pathSimple, pathExtText}},
}

// advRawCases are attacks at the level of protocol messages.
func advRawCases(t *testing.T, f *advFixture) []advRawCase {
	// noRows passes when the proxy answered with no DataRow but the given
	// ones, and reached ReadyForQuery.
	noRowsBut := func(allowed ...string) func(got, _ []string) error {
		return func(got, _ []string) error {
			if !slices.ContainsFunc(got, func(l string) bool { return strings.HasPrefix(l, "Z ") }) {
				return errors.New("no ReadyForQuery")
			}
			for _, l := range got {
				if strings.HasPrefix(l, "D ") && !slices.Contains(allowed, l) {
					return fmt.Errorf("unexpected row %s", l)
				}
			}
			return nil
		}
	}
	refused := func(got, _ []string) error {
		for _, l := range got {
			if strings.HasPrefix(l, "E 42501 pgveil: ") {
				return nil
			}
			if strings.HasPrefix(l, "D ") || strings.HasPrefix(l, "V ") {
				return fmt.Errorf("data before the refusal: %s", l)
			}
		}
		return errors.New("no 42501 refusal")
	}
	// firstErrorRefused passes when the first error is pgveil's refusal
	// (rows before it, from allowed statements, are masked: the scan
	// checks them).
	firstErrorRefused := func(got, _ []string) error {
		for _, l := range got {
			if strings.HasPrefix(l, "E ") {
				if strings.HasPrefix(l, "E 42501 pgveil: ") {
					return nil
				}
				return fmt.Errorf("first error is %s, not a refusal", l)
			}
		}
		return errors.New("no 42501 refusal")
	}
	// expectLines passes when every line is in the transcript.
	expectLines := func(lines ...string) func(got, _ []string) error {
		return func(got, _ []string) error {
			for _, l := range lines {
				if !slices.Contains(got, l) {
					return fmt.Errorf("missing %s", l)
				}
			}
			return nil
		}
	}
	// builtinLower passes when the statement prepared as lower('X') ran
	// the built-in (or was refused), not shadow.lower.
	builtinLower := func(got, _ []string) error {
		if slices.Contains(got, `D ("x")`) || slices.ContainsFunc(got, func(l string) bool { return strings.HasPrefix(l, "E 42501 pgveil: ") }) {
			return nil
		}
		return errors.New("the prepared lower('X') ran something other than the built-in lower")
	}
	sameAsMasked := func(got, ref []string) error {
		if strings.Join(got, "\n") != strings.Join(ref, "\n") {
			return errors.New("the answer through the proxy differs from the answer over masked data")
		}
		return nil
	}
	// The OIDs of built-in functions are the same in every database.
	oid := func(sig string) uint32 {
		out, err := w.pg.PsqlDB(t.Context(), advRefDB, fmt.Sprintf("SELECT '%s'::regprocedure::oid", sig))
		if err != nil {
			t.Fatal(err)
		}
		var n uint32
		if _, err := fmt.Sscan(out, &n); err != nil {
			t.Fatalf("oid of %s: %q", sig, out)
		}
		return n
	}
	queryToXML, readFile := oid("query_to_xml(text,boolean,boolean,text)"), oid("pg_read_file(text)")
	// peek_t's OID is the same in both databases (same schema, same order).
	peekType := func() uint32 {
		out, err := w.pg.PsqlDB(t.Context(), advDB, "SELECT 'peek_t'::regtype::oid")
		if err != nil {
			t.Fatal(err)
		}
		var n uint32
		if _, err := fmt.Sscan(out, &n); err != nil {
			t.Fatalf("oid of peek_t: %q", out)
		}
		return n
	}()
	query := func(sql string) *pgproto3.Query { return &pgproto3.Query{String: sql} }
	return []advRawCase{
		{name: "function-call-query-to-xml", check: refused, run: func(r *advRaw) ([]string, error) {
			err := r.send(&pgproto3.FunctionCall{Function: queryToXML, ArgFormatCodes: []uint16{0},
				Arguments: [][]byte{[]byte("SELECT ssn, email, secret_note FROM customers"), []byte("t"), []byte("f"), []byte("")}})
			if err != nil {
				return nil, err
			}
			return r.until(1)
		}},
		// A parameter declared of a type with a user cast: the statement
		// names no such type, the cast runs on the parameter.
		{name: "parse-parameter-type-user-cast", check: refused, run: func(r *advRaw) ([]string, error) {
			err := r.send(&pgproto3.Parse{Query: "SELECT upper($1)", ParameterOIDs: []uint32{peekType}},
				&pgproto3.Bind{Parameters: [][]byte{[]byte("(1)")}}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{})
			if err != nil {
				return nil, err
			}
			return r.until(1)
		}},
		{name: "function-call-pg-read-file", check: refused, run: func(r *advRaw) ([]string, error) {
			if err := r.send(&pgproto3.FunctionCall{Function: readFile, Arguments: [][]byte{[]byte("postgresql.conf")}}); err != nil {
				return nil, err
			}
			return r.until(1)
		}},
		{name: "query-with-embedded-nul", check: noRowsBut(`D ("1")`), run: func(r *advRaw) ([]string, error) {
			if err := r.send(query("SELECT 1\x00SELECT ssn, email FROM customers")); err != nil {
				return nil, err
			}
			return r.until(1)
		}},
		{name: "empty-query-with-embedded-nul", check: noRowsBut(), run: func(r *advRaw) ([]string, error) {
			if err := r.send(query("-- nothing\x00SELECT ssn, email FROM customers")); err != nil {
				return nil, err
			}
			return r.until(1)
		}},
		{name: "parse-with-embedded-nul", check: noRowsBut(), run: func(r *advRaw) ([]string, error) {
			// Parse: name, query up to the first NUL, then a parameter
			// count; the smuggled text must never run.
			body := []byte("\x00-- x\x00SELECT ssn FROM customers\x00\x00\x00")
			msg := append([]byte{'P', 0, 0, 0, 0}, body...)
			putLen(msg)
			if err := r.sendBytes(msg); err != nil {
				return nil, err
			}
			if err := r.send(&pgproto3.Bind{}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{}); err != nil {
				return nil, err
			}
			return r.until(1)
		}},
		// PostgreSQL re-analyses a prepared statement under the search_path
		// in force at Bind, which pgveil knows only at the next sync point:
		// a Bind after a SET in the same batch is refused (and the error
		// rolls the batch's SET back).
		{name: "bind-unnamed-after-set-search-path", check: expectLines(
			"E 42501 "+errContextInBatchText,
			`D ("1", "Person One", "c***@leak.example", "****************3645", "1971-01-01", "990000.00", "Leeds", NULL)`), run: func(r *advRaw) ([]string, error) {
			err := r.send(
				&pgproto3.Parse{Query: "SELECT id, ssn, email FROM customers ORDER BY id"},
				&pgproto3.Parse{Name: "adv_sp", Query: "SET search_path = shadow, public"},
				&pgproto3.Bind{PreparedStatement: "adv_sp"}, &pgproto3.Execute{},
				&pgproto3.Bind{}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{},
				&pgproto3.Sync{})
			if err != nil {
				return nil, err
			}
			tr, err := r.until(1)
			if err != nil {
				return tr, err
			}
			// And once the change is in effect.
			if err := r.send(query("SELECT * FROM customers ORDER BY id")); err != nil {
				return tr, err
			}
			more, err := r.until(1)
			return append(tr, more...), err
		}},
		{name: "bind-unnamed-prepared-under-shadow-path", check: expectLines("E 42501 " + errContextInBatchText), run: func(r *advRaw) ([]string, error) {
			if err := r.send(query("SET search_path = shadow, public")); err != nil {
				return nil, err
			}
			tr, err := r.until(1)
			if err != nil {
				return tr, err
			}
			err = r.send(
				&pgproto3.Parse{Query: "SELECT id, ssn FROM customers ORDER BY id"},
				&pgproto3.Parse{Name: "adv_sp", Query: "SET search_path = public"},
				&pgproto3.Bind{PreparedStatement: "adv_sp"}, &pgproto3.Execute{},
				&pgproto3.Bind{}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{},
				&pgproto3.Sync{})
			if err != nil {
				return tr, err
			}
			more, err := r.until(1)
			return append(tr, more...), err
		}},
		{name: "pipelined-simple-queries-rollback-search-path", ref: true, check: sameAsMasked, run: func(r *advRaw) ([]string, error) {
			// Three Query messages in one write: the proxy sees the SET
			// before the server has answered BEGIN.
			if err := r.send(query("BEGIN"), query("SET search_path = nowhere"), query("ROLLBACK")); err != nil {
				return nil, err
			}
			tr, err := r.until(3)
			if err != nil {
				return tr, err
			}
			if err := r.send(query("SELECT * FROM events_2024")); err != nil {
				return tr, err
			}
			more, err := r.until(1)
			return append(tr, more...), err
		}},
		{name: "prepared-function-re-resolved-at-bind", check: builtinLower, run: func(r *advRaw) ([]string, error) {
			// lower() is the built-in when parsed; after the path change
			// PostgreSQL re-analyses the statement and picks shadow.lower.
			if err := r.send(&pgproto3.Parse{Name: "adv_fn", Query: "SELECT lower('X') AS v"}, &pgproto3.Sync{}); err != nil {
				return nil, err
			}
			tr, err := r.until(1)
			if err != nil {
				return tr, err
			}
			if err := r.send(query("SET search_path = shadow, pg_catalog, public")); err != nil {
				return tr, err
			}
			more, err := r.until(1)
			tr = append(tr, more...)
			if err != nil {
				return tr, err
			}
			err = r.send(&pgproto3.Bind{PreparedStatement: "adv_fn"}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{})
			if err != nil {
				return tr, err
			}
			more, err = r.until(1)
			return append(tr, more...), err
		}},
		{name: "pipeline-refused-between-allowed", check: firstErrorRefused, run: func(r *advRaw) ([]string, error) {
			err := r.send(
				&pgproto3.Parse{Query: "SELECT ssn FROM customers WHERE id = 1"}, &pgproto3.Bind{}, &pgproto3.Execute{},
				&pgproto3.Parse{Query: "SELECT secret_note FROM customers"}, &pgproto3.Bind{}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{},
				&pgproto3.Parse{Query: "SELECT email FROM customers WHERE id = 1"}, &pgproto3.Bind{}, &pgproto3.Execute{},
				&pgproto3.Sync{})
			if err != nil {
				return nil, err
			}
			return r.until(1)
		}},
		{name: "describe-refused-statement", check: refused, run: func(r *advRaw) ([]string, error) {
			err := r.send(&pgproto3.Parse{Name: "adv_d", Query: "SELECT query_to_xml('SELECT ssn FROM customers', true, false, '')"},
				&pgproto3.Describe{ObjectType: 'S', Name: "adv_d"}, &pgproto3.Sync{})
			if err != nil {
				return nil, err
			}
			return r.until(1)
		}},
	}
}

// putLen writes a hand-made message's length field.
func putLen(msg []byte) {
	n := len(msg) - 1
	msg[1], msg[2], msg[3], msg[4] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
}
