-- roles: somebody
SELECT email FROM customers
