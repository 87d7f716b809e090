-- roles: billing
SELECT card_number FROM payments
