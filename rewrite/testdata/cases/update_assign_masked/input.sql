UPDATE customers SET ssn = 'x' WHERE id = 1
