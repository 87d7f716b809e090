SELECT secret_note FROM customers
