SELECT $x$customers$x$ AS s, email FROM customers
