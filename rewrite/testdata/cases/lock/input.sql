LOCK TABLE customers
