INSERT INTO diag_codes VALUES ('Z', 'z')
