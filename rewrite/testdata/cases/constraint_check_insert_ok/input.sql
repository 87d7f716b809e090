INSERT INTO staff_pay (id, bonus) VALUES (5, 1)
