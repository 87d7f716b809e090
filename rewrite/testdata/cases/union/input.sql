SELECT email FROM customers UNION SELECT email FROM crm.customers
