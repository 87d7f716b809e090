SELECT length(email), now() IS NOT NULL FROM customers
