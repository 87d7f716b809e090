-- search_path: crm, public
SELECT email FROM customers
