-- search_path: shady, pg_catalog, public
SELECT ('X'::text).lower
