GRANT SELECT ON customers TO analyst
