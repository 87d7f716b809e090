-- server: error
DISCARD ALL
