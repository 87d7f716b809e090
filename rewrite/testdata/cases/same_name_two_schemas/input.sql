SELECT public.customers.ssn, crm.customers.email FROM public.customers, crm.customers
