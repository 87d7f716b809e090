-- search_path: shady, pg_catalog, public
SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'application_name'
