UPDATE tagged SET t = 2 WHERE id = 1
