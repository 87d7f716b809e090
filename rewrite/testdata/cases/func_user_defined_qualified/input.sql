SELECT public.leak('x')
