TABLE customers
