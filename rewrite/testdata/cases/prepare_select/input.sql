PREPARE p(int) AS SELECT ssn FROM customers WHERE id = $1
