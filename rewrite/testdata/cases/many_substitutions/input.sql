SELECT a.id FROM customers a, customers b, customers c, customers d, customers e, customers f, customers g, customers h, customers i, customers j, customers k WHERE a.id = k.id
