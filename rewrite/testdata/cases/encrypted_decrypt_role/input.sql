-- roles: cardholder
SELECT pan, holder FROM cards
