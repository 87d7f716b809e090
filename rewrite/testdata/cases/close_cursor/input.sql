-- server: error
CLOSE c
