SELECT 'x'::checked_text
