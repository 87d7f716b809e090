VACUUM customers
