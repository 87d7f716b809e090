INSERT INTO customers VALUES (12, 'x')
