INSERT INTO checked VALUES (1, 'x')
