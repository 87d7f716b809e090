-- roles: support
SELECT id FROM logs
