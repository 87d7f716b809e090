SELECT id FROM customers ORDER BY name USING =~=
