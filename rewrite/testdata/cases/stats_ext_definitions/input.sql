SELECT stxname FROM pg_statistic_ext
