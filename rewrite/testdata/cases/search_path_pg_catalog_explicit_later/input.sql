-- search_path: public, pg_catalog
SELECT email FROM customers
