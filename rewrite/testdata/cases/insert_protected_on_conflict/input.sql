INSERT INTO customers (id, name, ssn) VALUES (10, 'x', '123-45-6789') ON CONFLICT (id) DO NOTHING
