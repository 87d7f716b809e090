SELECT set_config('search_path', email, false) FROM customers
