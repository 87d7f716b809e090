-- roles: dpo
SELECT * FROM cards
