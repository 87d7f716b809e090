UPDATE diag_codes SET label = 'x' WHERE code = 'F32'
