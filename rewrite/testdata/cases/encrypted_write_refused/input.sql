UPDATE cards SET pan = 'ct:v1:CCCC' WHERE id = 1
