SELECT id, rank() OVER (ORDER BY salary) FROM customers
