-- roles: marketing
INSERT INTO customer_tags VALUES (2, 'x')
