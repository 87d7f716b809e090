SELECT ssn, tier FROM vip_customers
