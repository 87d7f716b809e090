SELECT city FROM customers GROUP BY city HAVING max(salary) > 100000
