SELECT o.id, l.email FROM orders o, LATERAL (SELECT email FROM customers c WHERE c.id = o.customer_id) l
