SELECT /* customers */ email -- ssn
FROM customers
