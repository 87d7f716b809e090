SELECT * FROM order_totals
