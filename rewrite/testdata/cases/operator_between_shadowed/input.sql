-- search_path: shady, pg_catalog, public
SELECT id FROM customers WHERE name BETWEEN 'a' AND 'b'
