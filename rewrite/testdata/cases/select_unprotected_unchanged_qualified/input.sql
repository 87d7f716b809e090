SELECT id FROM orders o WHERE o.amount > 10
