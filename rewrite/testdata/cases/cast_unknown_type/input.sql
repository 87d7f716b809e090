SELECT 1::no_such_type
