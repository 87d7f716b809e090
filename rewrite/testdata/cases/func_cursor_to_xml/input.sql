SELECT cursor_to_xml('c', 1, true, true, '')
