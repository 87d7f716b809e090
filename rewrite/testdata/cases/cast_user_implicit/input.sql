SELECT length(t) FROM tagged
