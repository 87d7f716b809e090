-- roles: dpo
SELECT id FROM cards WHERE pan LIKE '4111%'
