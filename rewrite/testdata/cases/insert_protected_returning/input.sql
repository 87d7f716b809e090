INSERT INTO customers (id, name) VALUES (10, 'x') RETURNING ssn
