COPY (SELECT email FROM customers) TO STDOUT
