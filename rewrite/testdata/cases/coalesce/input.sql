SELECT coalesce(email, ssn) FROM customers
