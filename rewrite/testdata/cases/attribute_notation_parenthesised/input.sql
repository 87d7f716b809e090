SELECT (c).peek FROM customers c
