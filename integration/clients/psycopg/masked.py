#!/usr/bin/python3
"""masked.py reads a masked table through pgveil with psycopg 3 in text and
binary format and prints what it got; the integration test checks it.
Connection settings come from the libpq environment variables."""

import psycopg

with psycopg.connect() as conn:
    for binary in (False, True):
        with conn.cursor(binary=binary) as cur:
            cur.execute("SELECT email, ssn, birth_date, salary FROM customers WHERE id = %s", (1,))
            email, ssn, birth, salary = cur.fetchone()
            kind = "binary" if binary else "text"
            print(f"{kind}: {email} {ssn} {birth.isoformat()} {salary} {type(birth).__name__} {type(salary).__name__}")
    print("done: ok")
