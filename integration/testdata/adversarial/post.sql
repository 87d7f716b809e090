-- Runs after the data: objects that need it, privileges, statistics.
INSERT INTO probe VALUES (1, 'p1'), (2, 'p2');
INSERT INTO probe_t VALUES (1, ROW(1));
INSERT INTO shadow.customers VALUES (1, 'Shadow One', 'SHADOW-DECOY-0001');
CREATE MATERIALIZED VIEW customer_mv AS SELECT id, ssn FROM customers;
GRANT USAGE ON SCHEMA shadow, adv_team, evil TO PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public, shadow, adv_team
	TO adv_analyst, adv_support, adv_dpo, adv_team, adv_marketing;
-- adv_other owns schema evil and puts a view named customers in it.
GRANT SELECT ON customers TO adv_other;
SET ROLE adv_other;
CREATE VIEW evil.customers AS SELECT * FROM public.customers;
GRANT SELECT ON evil.customers TO adv_analyst, adv_support, adv_dpo;
RESET ROLE;
-- Statistics (pg_stats most_common_vals, histogram_bounds) over raw values.
CREATE STATISTICS customers_stx (mcv) ON city, ssn FROM customers;
ANALYZE;
-- A monitoring view an administrator created over pg_stats.
CREATE VIEW table_stats AS
	SELECT tablename, attname, most_common_vals::text AS mcv, histogram_bounds::text AS hist FROM pg_stats;
GRANT SELECT ON table_stats TO adv_analyst, adv_support, adv_dpo;
