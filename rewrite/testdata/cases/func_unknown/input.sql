SELECT no_such_function(id) FROM customers
