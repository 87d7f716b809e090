SELECT id, pan FROM cards WHERE pan = 'ct:v1:AAAA'
