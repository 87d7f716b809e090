UPDATE orders o SET amount = 1 FROM customers c WHERE c.id = o.customer_id AND c.ssn LIKE '1%'
