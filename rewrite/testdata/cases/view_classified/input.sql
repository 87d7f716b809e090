SELECT email FROM masked_ok
