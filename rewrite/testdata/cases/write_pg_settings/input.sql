UPDATE pg_settings SET setting = 'shady, public' WHERE name = 'search_path'
