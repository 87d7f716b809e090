SELECT public.customers.email FROM public.customers
