INSERT INTO staff_pay (id, grade) VALUES (5, 'a')
