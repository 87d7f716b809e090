SELECT to_jsonb(c.*) FROM customers c
