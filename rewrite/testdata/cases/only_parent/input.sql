SELECT * FROM ONLY customers
