-- search_path: shady, pg_catalog, public
SELECT CASE name WHEN 'x' THEN 1 ELSE 0 END FROM customers
