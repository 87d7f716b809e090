SELECT upper(pan), length(pan) FROM cards c
