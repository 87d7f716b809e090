SELECT email FROM customers EXCEPT ALL SELECT 'x'
