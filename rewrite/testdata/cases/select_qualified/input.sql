SELECT email FROM public.customers
