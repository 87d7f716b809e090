SELECT id FROM customers WHERE secret_note IS NOT NULL
