-- server: error
EXECUTE p(1)
