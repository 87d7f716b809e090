SET search_path = crm; SELECT email FROM customers
