UPDATE customers SET city = ssn WHERE id = 1
