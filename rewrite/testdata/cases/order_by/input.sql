SELECT id FROM customers ORDER BY ssn
