SELECT id::peek_t FROM orders
