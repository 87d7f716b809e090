SELECT * FROM dblink('dbname=postgres', 'select ssn from customers') AS t(s text)
