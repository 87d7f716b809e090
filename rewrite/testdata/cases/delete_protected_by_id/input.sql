DELETE FROM customers WHERE id = 99
