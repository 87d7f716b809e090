-- roles: dpo
SELECT email, ssn, secret_note FROM customers
