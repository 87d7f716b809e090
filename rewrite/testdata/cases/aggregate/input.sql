SELECT min(salary), max(birth_date), string_agg(email, ',') FROM customers
