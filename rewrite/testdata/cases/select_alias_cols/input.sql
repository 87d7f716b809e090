SELECT x.a, x.c FROM customers AS x(a, b, c)
