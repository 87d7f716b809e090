SELECT o.id FROM orders o JOIN customers c ON c.ssn = o.id::text
