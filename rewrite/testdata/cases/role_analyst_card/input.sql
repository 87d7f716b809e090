SELECT card_number FROM payments
