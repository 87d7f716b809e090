SELECT id FROM customers WHERE name =~= ANY (SELECT 'x')
