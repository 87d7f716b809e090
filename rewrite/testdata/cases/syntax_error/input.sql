SELEC email FROM customers
