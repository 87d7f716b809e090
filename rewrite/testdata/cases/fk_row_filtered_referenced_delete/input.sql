-- roles: marketing
DELETE FROM note_kinds WHERE kind = 'x'
