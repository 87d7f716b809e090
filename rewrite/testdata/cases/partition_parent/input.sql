SELECT customer_email FROM events
