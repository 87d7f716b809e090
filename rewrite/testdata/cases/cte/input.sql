WITH x AS (SELECT email FROM customers) SELECT * FROM x
