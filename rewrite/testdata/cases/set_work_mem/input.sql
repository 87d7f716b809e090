SET work_mem = '64MB'
