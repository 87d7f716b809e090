-- roles: analyst
-- search_path: $user, crm
SELECT * FROM customers
