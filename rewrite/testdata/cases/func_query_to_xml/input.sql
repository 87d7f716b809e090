SELECT query_to_xml('select * from customers', true, true, '')
