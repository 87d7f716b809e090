DELETE FROM customers WHERE email LIKE 'a%'
