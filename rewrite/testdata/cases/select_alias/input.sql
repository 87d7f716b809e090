SELECT c.email FROM customers c
