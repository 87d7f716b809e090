SELECT email || ':' || ssn FROM customers
