-- roles: dpo
INSERT INTO cards (id, pan) SELECT id, email FROM customers
