INSERT INTO orders VALUES (3, 1, 1.00, now())
