SELECT OPERATOR(public.###) 1
