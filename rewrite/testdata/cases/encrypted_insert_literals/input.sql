-- roles: dpo
INSERT INTO cards (id, pan, cvv, token) VALUES (2, '4111111111111111', NULL, 'tok-2'), (3, 4222, '123'::text, 'tok-3')
