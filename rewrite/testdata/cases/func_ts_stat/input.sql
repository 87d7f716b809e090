SELECT * FROM ts_stat('select to_tsvector(email) from customers')
