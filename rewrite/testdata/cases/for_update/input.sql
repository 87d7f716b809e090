SELECT email FROM customers WHERE id = 1 FOR UPDATE
