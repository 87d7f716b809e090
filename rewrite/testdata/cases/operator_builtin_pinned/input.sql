SELECT id FROM orders WHERE amount > 1 AND id = ANY(ARRAY[1, 2])
