CALL some_proc()
