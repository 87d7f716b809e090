SELECT id FROM orders WHERE id = '1'::int AND NULL::text IS NULL
