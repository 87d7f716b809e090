-- server: error
SELECT * FROM archive.payments
