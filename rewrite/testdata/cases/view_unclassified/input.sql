SELECT * FROM customer_emails
