-- roles: cardholder
SELECT id, pan FROM cards WHERE token IN ('tok-1', 'tok-2')
