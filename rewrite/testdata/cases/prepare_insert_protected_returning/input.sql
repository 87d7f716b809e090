PREPARE p AS INSERT INTO customers (id, name) VALUES (1, 'x') RETURNING email
