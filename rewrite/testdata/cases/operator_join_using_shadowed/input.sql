-- search_path: shady, pg_catalog, public
SELECT count(*) FROM (SELECT 'a'::text AS x) s JOIN (SELECT 'a'::text AS x) u USING (x)
