-- server: error
SELECT tableoid::regclass FROM customers
