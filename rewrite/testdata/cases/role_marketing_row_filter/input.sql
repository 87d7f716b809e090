-- roles: marketing
SELECT id, city FROM customers
