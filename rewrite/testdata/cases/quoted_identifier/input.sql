SELECT "email" FROM "customers"
