COPY customers (id, ssn) TO STDOUT WITH (FORMAT csv)
