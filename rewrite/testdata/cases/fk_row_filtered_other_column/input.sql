-- roles: marketing
UPDATE customer_tags SET tag = 'y' WHERE tag = 'x'
