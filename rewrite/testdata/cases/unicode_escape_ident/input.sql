SELECT * FROM U&"cust\006Fmers"
