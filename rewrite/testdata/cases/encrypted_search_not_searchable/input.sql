-- roles: cardholder
SELECT id FROM cards WHERE pan = '4111111111111111'
