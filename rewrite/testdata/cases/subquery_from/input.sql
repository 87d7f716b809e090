SELECT e FROM (SELECT email AS e FROM customers) s
