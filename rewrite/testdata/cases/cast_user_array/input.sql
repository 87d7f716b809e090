SELECT ARRAY[t]::text[] FROM tagged
