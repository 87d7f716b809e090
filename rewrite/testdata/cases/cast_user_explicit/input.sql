SELECT t::text FROM tagged
