SELECT count(*) FROM customers WHERE email = 'ada@example.com'
