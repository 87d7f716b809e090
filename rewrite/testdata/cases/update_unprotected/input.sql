UPDATE orders SET amount = 1 WHERE id = 1
