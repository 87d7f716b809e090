-- roles: marketing
UPDATE note_kinds SET kind = 'y' WHERE kind = 'x'
