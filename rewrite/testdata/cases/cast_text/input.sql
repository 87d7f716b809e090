SELECT birth_date::text, salary::int FROM customers
