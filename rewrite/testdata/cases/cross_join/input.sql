SELECT c1.email, c2.ssn FROM customers c1, customers c2
