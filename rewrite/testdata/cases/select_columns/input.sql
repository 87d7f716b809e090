SELECT id, email, ssn FROM customers
