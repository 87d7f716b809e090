SELECT id FROM cards ORDER BY pan
