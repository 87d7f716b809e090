SELECT json_agg(customers) FROM customers
