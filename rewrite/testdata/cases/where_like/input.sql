SELECT id FROM customers WHERE ssn LIKE '123%'
