-- server: error
DEALLOCATE p
