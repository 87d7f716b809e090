SELECT set_config('client_encoding', 'LATIN1', false)
