SELECT * FROM orders JOIN customers USING (id)
