UPDATE customers SET city = 'x' WHERE id = 1 RETURNING *
