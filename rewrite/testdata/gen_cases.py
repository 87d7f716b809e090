#!/usr/bin/env python3
"""gen_cases.py writes testdata/cases/<name>/input.sql from the table below.

Expected outputs are not written here: run `go test ./rewrite -update` and
review the diff of expected.txt files.
"""
import os

CASES = r"""
select_star|SELECT * FROM customers
select_columns|SELECT id, email, ssn FROM customers
select_alias|SELECT c.email FROM customers c
select_alias_cols|SELECT x.a, x.c FROM customers AS x(a, b, c)
select_qualified|SELECT email FROM public.customers
select_schema_qualified_colref|SELECT public.customers.email FROM public.customers
select_unprotected|SELECT * FROM orders
select_unprotected_unchanged_qualified|SELECT id FROM orders o WHERE o.amount > 10
expression_upper|SELECT upper(ssn) FROM customers
expression_concat|SELECT email || ':' || ssn FROM customers
cast_text|SELECT birth_date::text, salary::int FROM customers
where_like|SELECT id FROM customers WHERE ssn LIKE '123%'
where_eq|SELECT count(*) FROM customers WHERE email = 'ada@example.com'
order_by|SELECT id FROM customers ORDER BY ssn
group_by|SELECT ssn, count(*) FROM customers GROUP BY ssn
having|SELECT city FROM customers GROUP BY city HAVING max(salary) > 100000
aggregate|SELECT min(salary), max(birth_date), string_agg(email, ',') FROM customers
window|SELECT id, rank() OVER (ORDER BY salary) FROM customers
whole_row|SELECT row_to_json(c) FROM customers c
whole_row_unaliased|SELECT customers FROM customers
json_agg|SELECT json_agg(customers) FROM customers
to_jsonb|SELECT to_jsonb(c.*) FROM customers c
join_inner|SELECT o.id, c.email FROM orders o JOIN customers c ON c.id = o.customer_id
join_using|SELECT * FROM orders JOIN customers USING (id)
join_on_protected|SELECT o.id FROM orders o JOIN customers c ON c.ssn = o.id::text
join_natural|SELECT * FROM customers NATURAL JOIN payments
join_left_nested|SELECT * FROM orders o LEFT JOIN (payments p JOIN customers c ON c.id = p.customer_id) ON o.customer_id = c.id
cross_join|SELECT c1.email, c2.ssn FROM customers c1, customers c2
subquery_from|SELECT e FROM (SELECT email AS e FROM customers) s
subquery_where_in|SELECT id FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE ssn LIKE '1%')
subquery_exists|SELECT id FROM orders o WHERE EXISTS (SELECT 1 FROM customers c WHERE c.id = o.customer_id AND c.email LIKE 'a%')
subquery_scalar|SELECT (SELECT ssn FROM customers WHERE id = 1)
subquery_any|SELECT 1 WHERE '123-45-6789' = ANY (SELECT ssn FROM customers)
lateral|SELECT o.id, l.email FROM orders o, LATERAL (SELECT email FROM customers c WHERE c.id = o.customer_id) l
cte|WITH x AS (SELECT email FROM customers) SELECT * FROM x
cte_shadow_nonrecursive|WITH customers AS (SELECT * FROM customers) SELECT email FROM customers
cte_recursive|WITH RECURSIVE r(n, e) AS (SELECT 1, email FROM customers WHERE id = 1 UNION ALL SELECT n + 1, e FROM r WHERE n < 3) SELECT * FROM r
cte_recursive_shadow|WITH RECURSIVE customers(id) AS (SELECT 1 UNION ALL SELECT id + 1 FROM customers WHERE id < 3) SELECT * FROM customers
cte_nested_scope|WITH a AS (SELECT 1 AS x) SELECT (WITH b AS (SELECT email FROM customers) SELECT email FROM b LIMIT 1) FROM a
cte_later_sees_earlier|WITH a AS (SELECT ssn FROM customers), b AS (SELECT * FROM a) SELECT * FROM b
cte_materialized|WITH x AS MATERIALIZED (SELECT ssn FROM customers) SELECT * FROM x
union|SELECT email FROM customers UNION SELECT email FROM crm.customers
intersect|SELECT ssn FROM customers INTERSECT SELECT '123-45-6789'
except_all|SELECT email FROM customers EXCEPT ALL SELECT 'x'
values|VALUES (1, 'a'), (2, 'b')
table_stmt|TABLE customers
distinct_on|SELECT DISTINCT ON (ssn) ssn, id FROM customers
case_expr|SELECT CASE WHEN ssn LIKE '1%' THEN 1 ELSE 0 END FROM customers
coalesce|SELECT coalesce(email, ssn) FROM customers
array_agg_sub|SELECT ARRAY(SELECT ssn FROM customers)
limit_offset|SELECT email FROM customers ORDER BY id LIMIT 1 OFFSET 1
tablesample|SELECT email FROM customers TABLESAMPLE BERNOULLI (50)
generate_series|SELECT g FROM generate_series(1, 3) g
function_in_from_with_table|SELECT * FROM customers, unnest(ARRAY[1, 2]) u
only_parent|SELECT * FROM ONLY customers
partition_parent|SELECT customer_email FROM events
inheritance_child|SELECT ssn, tier FROM vip_customers
func_logical_decoding|SELECT * FROM pg_logical_slot_peek_changes('s', NULL, NULL)
partition_child|SELECT customer_email FROM events_2024
view_unclassified|SELECT * FROM customer_emails
view_unclassified_no_protected|SELECT * FROM order_totals
view_classified|SELECT email FROM masked_ok
search_path_crm|-- search_path: crm, public
SELECT email FROM customers
search_path_pg_catalog_explicit_later|-- search_path: public, pg_catalog
SELECT email FROM customers
search_path_user|-- roles: analyst
-- search_path: $user, crm
SELECT * FROM customers
quoted_identifier|SELECT "email" FROM "customers"
quoted_upper_case_table|-- server: error
SELECT * FROM "Customers"
unicode_escape_ident|SELECT * FROM U&"cust\006Fmers"
dollar_quoted_string|SELECT $x$customers$x$ AS s, email FROM customers
comment_tricks|SELECT /* customers */ email -- ssn
FROM customers
deny_explicit|SELECT secret_note FROM customers
deny_star|SELECT * FROM customers
deny_in_where|SELECT id FROM customers WHERE secret_note IS NOT NULL
deny_qualified|SELECT c.secret_note FROM customers c
role_support|-- roles: support
SELECT email, ssn FROM customers
role_senior_support_inherits|-- roles: senior_support, support
SELECT email, ssn FROM customers
role_dpo_raw|-- roles: dpo
SELECT email, ssn, secret_note FROM customers
role_billing_card|-- roles: billing
SELECT card_number FROM payments
role_analyst_card|SELECT card_number FROM payments
role_marketing_row_filter|-- roles: marketing
SELECT id, city FROM customers
encrypted_star|SELECT * FROM cards
encrypted_where|SELECT id, pan FROM cards WHERE pan = 'ct:v1:AAAA'
encrypted_expression|SELECT upper(pan), length(pan) FROM cards c
encrypted_deny_explicit|SELECT cvv FROM cards
encrypted_deny_where|SELECT id FROM cards WHERE cvv IS NOT NULL
encrypted_decrypt_role|-- roles: cardholder
SELECT pan, holder FROM cards
encrypted_decrypt_role_star|-- roles: cardholder
SELECT * FROM cards
encrypted_dpo_raw|-- roles: dpo
SELECT * FROM cards
encrypted_view_unclassified|SELECT * FROM card_holders
encrypted_write_refused|UPDATE cards SET pan = 'ct:v1:CCCC' WHERE id = 1
encrypted_insert_literals|-- roles: dpo
INSERT INTO cards (id, pan, cvv, token) VALUES (2, '4111111111111111', NULL, 'tok-2'), (3, 4222, '123'::text, 'tok-3')
encrypted_insert_select_plaintext|-- roles: dpo
INSERT INTO cards (id, pan) SELECT id, email FROM customers
encrypted_update_decrypt_role|-- roles: cardholder
UPDATE cards SET pan = '4222222222222222', holder = 'Bob' WHERE token = 'tok-1' RETURNING id, pan
encrypted_search_in|-- roles: cardholder
SELECT id, pan FROM cards WHERE token IN ('tok-1', 'tok-2')
encrypted_search_not_searchable|-- roles: cardholder
SELECT id FROM cards WHERE pan = '4111111111111111'
encrypted_like_refused|-- roles: dpo
SELECT id FROM cards WHERE pan LIKE '4111%'
encrypted_order_refused|SELECT id FROM cards ORDER BY pan
many_substitutions|SELECT a.id FROM customers a, customers b, customers c, customers d, customers e, customers f, customers g, customers h, customers i, customers j, customers k WHERE a.id = k.id
encrypted_join_subquery|SELECT c.name, k.pan FROM customers c JOIN (SELECT customer_id, pan FROM cards) k ON k.customer_id = c.id
role_unknown_masks|-- roles: somebody
SELECT email FROM customers
func_query_to_xml|SELECT query_to_xml('select * from customers', true, true, '')
func_table_to_xml|SELECT table_to_xml('customers', true, true, '')
func_cursor_to_xml|SELECT cursor_to_xml('c', 1, true, true, '')
func_pg_read_file|SELECT pg_read_file('/etc/passwd')
func_lo_import|SELECT lo_import('/etc/passwd')
func_set_config|SELECT set_config('search_path', 'crm', false)
func_ts_stat|SELECT * FROM ts_stat('select to_tsvector(email) from customers')
func_dblink|SELECT * FROM dblink('dbname=postgres', 'select ssn from customers') AS t(s text)
func_user_defined|SELECT leak(ssn) FROM customers
func_user_defined_qualified|SELECT public.leak('x')
func_other_schema|SELECT crm.helper(1)
func_pg_catalog_qualified|SELECT pg_catalog.upper(email) FROM customers
func_builtin_ok|SELECT length(email), now() IS NOT NULL FROM customers
stats_pg_stats|SELECT most_common_vals FROM pg_stats WHERE tablename = 'customers'
stats_pg_stats_qualified|SELECT * FROM pg_catalog.pg_stats
stats_pg_statistic|SELECT * FROM pg_statistic
catalog_pg_class|SELECT relname FROM pg_class WHERE relname = 'customers'
explain_protected|EXPLAIN SELECT * FROM customers WHERE ssn = '123-45-6789'
explain_unprotected|EXPLAIN SELECT * FROM orders
explain_analyze_protected|EXPLAIN ANALYZE SELECT email FROM customers
do_block|DO $$ BEGIN PERFORM 1; END $$
call_proc|CALL some_proc()
create_table|CREATE TABLE t (a int)
create_table_as|CREATE TABLE t AS SELECT * FROM customers
select_into|SELECT * INTO t FROM customers
create_view|CREATE VIEW v AS SELECT * FROM customers
drop_table|DROP TABLE customers
alter_table|ALTER TABLE customers ADD COLUMN x int
truncate|TRUNCATE customers
grant|GRANT SELECT ON customers TO analyst
listen|LISTEN channel
notify|NOTIFY channel, 'hello'
unlisten|UNLISTEN *
insert_unprotected|INSERT INTO orders VALUES (3, 1, 1.00, now())
insert_select_masked|INSERT INTO orders (id, customer_id) SELECT id + 100, length(ssn) FROM customers
insert_protected_plain|INSERT INTO customers (id, name) VALUES (10, 'x')
insert_protected_returning|INSERT INTO customers (id, name) VALUES (10, 'x') RETURNING ssn
insert_protected_on_conflict|INSERT INTO customers (id, name, ssn) VALUES (10, 'x', '123-45-6789') ON CONFLICT (id) DO NOTHING
update_unprotected|UPDATE orders SET amount = 1 WHERE id = 1
update_protected_ok|UPDATE customers SET city = 'Paris' WHERE id = 1
update_protected_where|UPDATE customers SET city = 'Paris' WHERE ssn LIKE '1%'
update_protected_set_from|UPDATE customers SET city = ssn WHERE id = 1
update_protected_returning|UPDATE customers SET city = 'x' WHERE id = 1 RETURNING email
update_protected_whole_row|UPDATE customers SET city = 'x' WHERE customers::text LIKE '%123%'
update_from_protected|UPDATE orders o SET amount = 1 FROM customers c WHERE c.id = o.customer_id AND c.ssn LIKE '1%'
delete_unprotected|DELETE FROM orders WHERE id = 5
delete_protected_where|DELETE FROM customers WHERE email LIKE 'a%'
delete_protected_by_id|DELETE FROM customers WHERE id = 99
delete_using_protected|DELETE FROM orders o USING customers c WHERE c.id = o.customer_id AND c.ssn = 'x'
merge|MERGE INTO customers c USING orders o ON c.id = o.customer_id WHEN MATCHED THEN UPDATE SET city = 'x'
copy_table_to_stdout|COPY customers TO STDOUT
copy_table_columns|COPY customers (id, ssn) TO STDOUT WITH (FORMAT csv)
copy_query|COPY (SELECT email FROM customers) TO STDOUT
copy_from_stdin_unprotected|COPY orders FROM STDIN
copy_from_stdin_protected|COPY customers FROM STDIN
copy_to_file|COPY customers TO '/tmp/x'
copy_program|COPY (SELECT 1) TO PROGRAM 'cat'
copy_unprotected_table|COPY orders TO STDOUT
declare_cursor|DECLARE c CURSOR WITH HOLD FOR SELECT ssn FROM customers
fetch|-- server: error
FETCH 10 FROM c
close_cursor|-- server: error
CLOSE c
prepare_select|PREPARE p(int) AS SELECT ssn FROM customers WHERE id = $1
prepare_insert_protected_returning|PREPARE p AS INSERT INTO customers (id, name) VALUES (1, 'x') RETURNING email
execute|-- server: error
EXECUTE p(1)
deallocate|-- server: error
DEALLOCATE p
set_search_path|SET search_path TO crm, public
set_search_path_local|SET LOCAL search_path = "$user", public
reset_search_path|RESET search_path
set_scs_off|SET standard_conforming_strings = off
set_scs_on|SET standard_conforming_strings = on
set_client_encoding_latin1|SET client_encoding = 'LATIN1'
set_client_encoding_utf8|SET client_encoding = 'UTF8'
set_names|SET NAMES 'SQL_ASCII'
set_role|SET ROLE dpo
set_session_authorization|SET SESSION AUTHORIZATION dpo
reset_all|RESET ALL
set_work_mem|SET work_mem = '64MB'
set_transaction|SET TRANSACTION ISOLATION LEVEL SERIALIZABLE
show|SHOW search_path
begin_commit|BEGIN; SELECT email FROM customers; COMMIT
multi_statement_one_refused|SELECT email FROM customers; DROP TABLE customers
discard_all|-- server: error
DISCARD ALL
lock|LOCK TABLE customers
domain_column|SELECT contact_email FROM contacts
same_name_two_schemas|SELECT public.customers.ssn, crm.customers.email FROM public.customers, crm.customers
returning_star|UPDATE customers SET city = 'x' WHERE id = 1 RETURNING *
insert_assign_masked|INSERT INTO customers (id, name, ssn) VALUES (11, 'x', '1')
insert_no_column_list_protected|INSERT INTO customers VALUES (12, 'x')
update_assign_masked|UPDATE customers SET ssn = 'x' WHERE id = 1
operator_user_defined|SELECT ### 1
operator_user_defined_qualified|SELECT OPERATOR(public.###) 1
operator_builtin_pinned|SELECT id FROM orders WHERE amount > 1 AND id = ANY(ARRAY[1, 2])
attribute_notation_function|SELECT c.peek FROM customers c
explain_update_protected|EXPLAIN UPDATE customers SET city = 'x' WHERE id = 1
fk_oracle_insert|INSERT INTO ssn_refs VALUES ('123-45-6789')
fk_oracle_copy|COPY ssn_refs FROM STDIN
multi_statement_search_path|SET search_path = crm; SELECT email FROM customers
multi_statement_set_role|SET ROLE support; SELECT 1
lock_access_share|LOCK TABLE customers IN ACCESS SHARE MODE
set_config_search_path|SELECT pg_catalog.set_config('search_path', '', false)
set_config_pinned|SELECT set_config('client_encoding', 'LATIN1', false)
set_config_in_query|SELECT set_config('search_path', email, false) FROM customers
stats_ext_definitions|SELECT stxname FROM pg_statistic_ext
vacuum|VACUUM customers
syntax_error|SELEC email FROM customers
empty|-- nothing here
unknown_relation|-- server: error
SELECT * FROM no_such_table
unknown_protected_name_elsewhere|-- server: error
SELECT * FROM archive.payments
params|-- server: error
SELECT email FROM customers WHERE id = $1
for_update|SELECT email FROM customers WHERE id = 1 FOR UPDATE
xmlelement|SELECT xmlelement(name x, ssn) FROM customers
row_compare|SELECT ROW(ssn, email) = ROW('1', '2') FROM customers
array_subscript|SELECT (ARRAY[ssn])[1] FROM customers
system_column|-- server: error
SELECT ctid, xmin FROM customers
tableoid|-- server: error
SELECT tableoid::regclass FROM customers
"""

here = os.path.dirname(os.path.abspath(__file__))
for block in CASES.strip().split("\n"):
    pass

entries = []
cur = None
for line in CASES.strip("\n").split("\n"):
    if "|" in line and not line.startswith("--") and (cur is None or not cur[1].endswith("\\")):
        name, sql = line.split("|", 1)
        if name.replace("_", "").isalnum() and name == name.lower():
            cur = [name, sql]
            entries.append(cur)
            continue
    cur[1] += "\n" + line

for name, sql in entries:
    d = os.path.join(here, "cases", name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "input.sql"), "w") as f:
        f.write(sql.strip() + "\n")
print(len(entries), "cases")
