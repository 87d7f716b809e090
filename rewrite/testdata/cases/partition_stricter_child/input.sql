-- roles: support
SELECT id, who FROM logs
