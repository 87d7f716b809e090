SELECT * FROM pg_statistic
