-- server: error
SELECT ctid, xmin FROM customers
