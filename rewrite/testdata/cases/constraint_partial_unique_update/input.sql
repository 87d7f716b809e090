UPDATE staff_pay SET name = 'x' WHERE id = 1
