WITH customers AS (SELECT * FROM customers) SELECT email FROM customers
