SELECT DISTINCT ON (ssn) ssn, id FROM customers
