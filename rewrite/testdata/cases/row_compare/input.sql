SELECT ROW(ssn, email) = ROW('1', '2') FROM customers
