SELECT cvv FROM cards
