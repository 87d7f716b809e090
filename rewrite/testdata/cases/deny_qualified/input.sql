SELECT c.secret_note FROM customers c
