UPDATE pay_nv SET note = 'x' WHERE id = 1
