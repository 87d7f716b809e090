SELECT (c).email, (pg_catalog.pg_last_wal_receive_lsn() IS NULL) AS x FROM customers c
