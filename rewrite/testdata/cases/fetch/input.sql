-- server: error
FETCH 10 FROM c
