SELECT set_config('search_path', 'crm', false)
