-- roles: marketing
UPDATE customer_tags SET customer_id = 2 WHERE tag = 'x'
