ALTER TABLE customers ADD COLUMN x int
