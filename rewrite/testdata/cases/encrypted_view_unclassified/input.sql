SELECT * FROM card_holders
