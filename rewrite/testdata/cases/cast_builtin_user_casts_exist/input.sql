SELECT email::text, CAST(salary AS int), '1'::int, 1::text, ARRAY[ssn]::text[] FROM customers
