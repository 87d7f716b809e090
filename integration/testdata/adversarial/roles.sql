-- Cluster-wide part of the adversarial fixture (run in database postgres).
-- Idempotent, so that -count=N works on one cluster.
DROP DATABASE IF EXISTS adv WITH (FORCE);
DROP DATABASE IF EXISTS adv_ref WITH (FORCE);
DO $$
DECLARE r text;
BEGIN
	FOREACH r IN ARRAY ARRAY['adv_analyst', 'adv_support', 'adv_dpo', 'adv_other', 'adv_marketing'] LOOP
		IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
			EXECUTE format('CREATE ROLE %I LOGIN', r);
		END IF;
	END LOOP;
	-- adv_team: a group role of the analyst with its own "$user" schema.
	IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'adv_team') THEN
		CREATE ROLE adv_team;
	END IF;
END $$;
GRANT adv_team TO adv_analyst;
CREATE DATABASE adv;
CREATE DATABASE adv_ref;
