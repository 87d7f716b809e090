SELECT * FROM orders o LEFT JOIN (payments p JOIN customers c ON c.id = p.customer_id) ON o.customer_id = c.id
