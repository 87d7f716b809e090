SELECT (ARRAY[ssn])[1] FROM customers
