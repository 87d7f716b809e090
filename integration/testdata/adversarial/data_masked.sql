-- data_raw.sql as adv_analyst must see it, written out by hand from the
-- policy: partial(last=4), email, truncate(year), round(-4), deny (NULL).
INSERT INTO customers VALUES
	(1, 'Person One', 'c***@leak.example', '****************3645', '1971-01-01', 990000.00, 'Leeds', NULL),
	(2, 'Person Two', 'b***@corp.example', '****************1234', '1985-01-01', 50000.00, 'York', NULL),
	(3, 'Person Three', 'z***@z.example', '****************0001', '1990-01-01', 70000.00, 'Hull', NULL),
	(4, 'Person Four', NULL, NULL, NULL, NULL, NULL, NULL);
INSERT INTO events VALUES
	(1, 'p***@leak.example', '2024-05-01'),
	(2, 'b***@corp.example', '2025-05-01'),
	(3, 'o***@leak.example', '2020-06-01'),
	(4, 't***@leak.example', '2030-06-01');
INSERT INTO staff VALUES (1, '**********1111');
INSERT INTO staff_archive VALUES (2, '******************4321');
