UPDATE staff_pay SET grade = 'a' WHERE id = 1
