-- server: error
SELECT * FROM "Customers"
