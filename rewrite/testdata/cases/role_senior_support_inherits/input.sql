-- roles: senior_support, support
SELECT email, ssn FROM customers
