UPDATE staff_pay SET bonus = 5 WHERE id = 1
