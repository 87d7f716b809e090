SELECT xmlelement(name x, ssn) FROM customers
