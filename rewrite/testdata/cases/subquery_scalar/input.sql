SELECT (SELECT ssn FROM customers WHERE id = 1)
