-- roles: cardholder
UPDATE cards SET pan = '4222222222222222', holder = 'Bob' WHERE token = 'tok-1' RETURNING id, pan
