BEGIN; SELECT email FROM customers; COMMIT
