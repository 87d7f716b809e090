-- server: error
SELECT email FROM customers WHERE id = $1
