SELECT CAST(t AS text) FROM tagged
