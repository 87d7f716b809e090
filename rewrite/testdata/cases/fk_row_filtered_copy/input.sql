-- roles: marketing
COPY customer_tags FROM STDIN
