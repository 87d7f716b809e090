DELETE FROM diag_codes WHERE code = 'F32'
