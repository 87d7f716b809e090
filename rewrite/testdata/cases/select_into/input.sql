SELECT * INTO t FROM customers
