UPDATE customers SET city = 'x' WHERE customers::text LIKE '%123%'
