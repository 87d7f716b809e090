INSERT INTO orders (id, customer_id) SELECT id + 100, length(ssn) FROM customers
