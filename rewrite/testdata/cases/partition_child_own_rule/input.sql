-- roles: support
SELECT who FROM logs_a
