-- The real data behind the proxy, with canary values the suite hunts for.
INSERT INTO customers VALUES
	(1, 'Person One', 'canary.person@leak.example', 'CANARY-SSN-918273645', '1971-03-14', 987654.32, 'Leeds', 'CANARY-DENY-55501'),
	(2, 'Person Two', 'bob.smith@corp.example', 'AAAAAA-SSN-000001234', '1985-07-02', 51234.50, 'York', 'note two'),
	(3, 'Person Three', 'zed@z.example', 'BBBBBB-SSN-999990001', '1990-12-31', 72000.00, 'Hull', 'note three'),
	(4, 'Person Four', NULL, NULL, NULL, NULL, NULL, NULL);
INSERT INTO events VALUES
	(1, 'partition.canary@leak.example', '2024-05-01'),
	(2, 'bob.smith@corp.example', '2025-05-01'),
	(3, 'old.partition@leak.example', '2020-06-01'),
	(4, 'team.partition@leak.example', '2030-06-01');
INSERT INTO staff VALUES (1, 'STAFF-000-1111');
INSERT INTO staff_archive VALUES (2, 'INHERIT-CANARY-7654321');
