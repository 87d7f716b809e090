SELECT c.name, k.pan FROM customers c JOIN (SELECT customer_id, pan FROM cards) k ON k.customer_id = c.id
