UPDATE staff_pay SET id = 7 WHERE id = 1
