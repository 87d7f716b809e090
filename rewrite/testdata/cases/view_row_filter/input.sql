-- roles: marketing
SELECT email FROM masked_ok
