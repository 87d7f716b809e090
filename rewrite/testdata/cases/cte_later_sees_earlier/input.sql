WITH a AS (SELECT ssn FROM customers), b AS (SELECT * FROM a) SELECT * FROM b
