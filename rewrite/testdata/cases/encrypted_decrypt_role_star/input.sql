-- roles: cardholder
SELECT * FROM cards
