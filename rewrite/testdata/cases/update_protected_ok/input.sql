UPDATE customers SET city = 'Paris' WHERE id = 1
