SELECT row_to_json(c) FROM customers c
