SELECT * FROM pg_logical_slot_peek_changes('s', NULL, NULL)
