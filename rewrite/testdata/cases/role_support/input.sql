-- roles: support
SELECT email, ssn FROM customers
