INSERT INTO tagged (id, t) VALUES (1, 1)
