SELECT table_to_xml('customers', true, true, '')
