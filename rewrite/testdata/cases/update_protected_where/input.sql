UPDATE customers SET city = 'Paris' WHERE ssn LIKE '1%'
