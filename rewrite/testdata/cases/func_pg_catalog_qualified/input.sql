SELECT pg_catalog.upper(email) FROM customers
