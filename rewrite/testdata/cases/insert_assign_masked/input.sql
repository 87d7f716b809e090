INSERT INTO customers (id, name, ssn) VALUES (11, 'x', '1')
