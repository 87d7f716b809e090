SELECT email FROM customers; DROP TABLE customers
