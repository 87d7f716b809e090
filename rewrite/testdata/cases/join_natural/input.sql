SELECT * FROM customers NATURAL JOIN payments
