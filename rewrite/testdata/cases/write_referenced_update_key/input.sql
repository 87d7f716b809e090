UPDATE diag_codes SET code = 'X' WHERE code = 'F32'
