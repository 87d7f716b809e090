SELECT * FROM customers, unnest(ARRAY[1, 2]) u
