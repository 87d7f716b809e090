#!/usr/bin/python3
"""Differential-test client scenario for pgveil, written against psycopg 3.

The program connects with the standard libpq environment variables (PGHOST,
PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE), runs a fixed list of
steps and prints a transcript on standard output.  The integration test runs
it once directly against PostgreSQL and once through the proxy and compares
the two transcripts byte for byte, so every line printed here must be fully
deterministic: no timings, no backend process ids, no random values.

Every transcript line starts with the name of the step that printed it.  Any
unexpected failure is printed on standard error and the exit code is 1.

Run it with the Debian interpreter, which has python3-psycopg installed:

    /usr/bin/python3 integration/clients/psycopg/scenario.py
"""

import datetime
import decimal
import hashlib
import ipaddress
import json
import secrets
import sys
import threading
import time
import traceback
import uuid

import psycopg
from psycopg import errors, sql
from psycopg.types.numeric import Int4
from psycopg.types.json import Json, Jsonb

# The transcript is always UTF-8 with "\n" line endings, whatever the locale
# of the process that runs us happens to be.
sys.stdout.reconfigure(encoding="utf-8", newline="\n")

# How long we are willing to wait for notifications, for the query to be
# cancelled to show up as running, and for the cancelled query to return.
NOTIFY_TIMEOUT_SECONDS = 5.0
ACTIVE_WAIT_SECONDS = 5.0
CANCEL_LIMIT_SECONDS = 10.0

# A random token for this run. It only ever appears in names that other
# sessions could see (the NOTIFY channel, the text of the cancelled query)
# and is never printed.
RUN_TOKEN = secrets.token_hex(6)


def out(step, *parts):
    """Print one transcript line that starts with the step name."""
    print(step + ": " + " ".join(str(p) for p in parts), flush=True)


def connect():
    """Open a new connection in autocommit mode.

    libpq reads the PG* environment variables itself.  The client encoding is
    forced to UTF8 so that text comes back as str even if the server's
    default encoding is something else.
    """
    return psycopg.connect(autocommit=True, client_encoding="UTF8")


def fmt(value):
    """Render a value decoded by psycopg in a canonical, typed text form."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return "int:" + str(value)
    if isinstance(value, decimal.Decimal):
        return "dec:" + str(value)
    if isinstance(value, float):
        return "float:" + repr(value)
    if isinstance(value, str):
        return "str:" + json.dumps(value, ensure_ascii=False)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bytes:\\x" + bytes(value).hex()
    if isinstance(value, datetime.datetime):
        return "datetime:" + value.isoformat()
    if isinstance(value, datetime.date):
        return "date:" + value.isoformat()
    if isinstance(value, datetime.timedelta):
        return "timedelta:%dd%ds%dus" % (value.days, value.seconds, value.microseconds)
    if isinstance(value, uuid.UUID):
        return "uuid:" + str(value)
    if isinstance(value, (ipaddress.IPv4Interface, ipaddress.IPv6Interface,
                          ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return "ip:" + str(value)
    if isinstance(value, list):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        # JSON documents come back as dicts; keep the key order the server sent.
        return "json:" + json.dumps(value, ensure_ascii=False)
    return type(value).__name__ + ":" + repr(value)


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------
# Step 1: a round trip of many column types through bound parameters.
# ---------------------------------------------------------------------------

TYPE_COLUMNS = [
    ("c_smallint", "smallint"),
    ("c_int", "int"),
    ("c_bigint", "bigint"),
    ("c_numeric", "numeric(20,6)"),
    ("c_real", "real"),
    ("c_double", "double precision"),
    ("c_text", "text"),
    ("c_varchar", "varchar(20)"),
    ("c_char", "char(3)"),
    ("c_bool", "bool"),
    ("c_date", "date"),
    ("c_ts", "timestamp"),
    ("c_tstz", "timestamptz"),
    ("c_interval", "interval"),
    ("c_uuid", "uuid"),
    ("c_json", "json"),
    ("c_jsonb", "jsonb"),
    ("c_bytea", "bytea"),
    ("c_intarr", "int[]"),
    ("c_textarr", "text[]"),
    ("c_inet", "inet"),
]

# Each row lists the values in the order of TYPE_COLUMNS.  Intervals are
# passed as strings (psycopg sends str as "unknown", so the server parses
# them) because a Python timedelta cannot express months.
TYPE_ROWS = [
    (1, [
        -32768,
        -2147483648,
        -9223372036854775808,
        decimal.Decimal("-12345678901234.123456"),
        -1.5,
        -1.2345678901234567e300,
        "Zoë ✓",
        "tab\there",
        "ab",
        True,
        datetime.date(2024, 2, 29),
        datetime.datetime(2024, 2, 29, 13, 45, 56, 123456),
        datetime.datetime(2024, 2, 29, 13, 45, 56, 123456,
                          tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
        "1 year 2 mons 3 days 04:05:06.789",
        uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        Json({"b": 1, "a": [1, 2, "Zoë"]}),
        Jsonb({"nested": {"k": [True, False, None]}, "a": 1}),
        b"\x00\x01\x00\xff\\'",
        [1, None, -3],
        ["a b", "", "Zoë", None, 'with "quote"', "back\\slash", "NULL"],
        ipaddress.ip_interface("192.168.0.1/24"),
    ]),
    (2, [
        32767,
        2147483647,
        9223372036854775807,
        decimal.Decimal("99999999999999.999999"),
        3.25,
        3.141592653589793,
        "",
        "exactly-twenty-chars",
        "z",
        False,
        datetime.date(1999, 12, 31),
        datetime.datetime(2000, 1, 1, 0, 0, 0),
        datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc),
        "-00:00:01.5",
        uuid.UUID("00000000-0000-0000-0000-000000000000"),
        Json([]),
        Jsonb({}),
        b"",
        [7],
        ["single"],
        ipaddress.ip_interface("::1/128"),
    ]),
    # The third row is NULL in every column.
    (3, [None] * len(TYPE_COLUMNS)),
]


def step_types(conn):
    step = "types"
    conn.execute("SET TimeZone TO 'UTC'")
    out(step, "TimeZone", conn.info.parameter_status("TimeZone"))
    columns_ddl = ", ".join("%s %s" % (name, typ) for name, typ in TYPE_COLUMNS)
    conn.execute("CREATE TEMP TABLE veil_types (id int PRIMARY KEY, %s)" % columns_ddl)

    names = ", ".join(name for name, _ in TYPE_COLUMNS)
    placeholders = ", ".join(["%s"] * (len(TYPE_COLUMNS) + 1))
    insert = "INSERT INTO veil_types (id, %s) VALUES (%s)" % (names, placeholders)
    with conn.cursor() as cur:
        for row_id, values in TYPE_ROWS:
            cur.execute(insert, [row_id] + values)
            out(step, "insert id=%d rowcount=%d" % (row_id, cur.rowcount))

    select = "SELECT id, %s FROM veil_types ORDER BY id" % names
    # Read everything back twice: once in the text result format (psycopg's
    # default) and once in the binary result format.
    for label, binary in (("text", False), ("binary", True)):
        with conn.cursor(binary=binary) as cur:
            cur.execute(select)
            for row in cur:
                row_id = row[0]
                for (name, _), value in zip(TYPE_COLUMNS, row[1:]):
                    out(step, "%s id=%d %s=%s" % (label, row_id, name, fmt(value)))

    # The server's own text rendering of every column, as a stable reference.
    casts = ", ".join("%s::text" % name for name, _ in TYPE_COLUMNS)
    with conn.cursor() as cur:
        cur.execute("SELECT id, %s FROM veil_types ORDER BY id" % casts)
        for row in cur:
            for (name, _), value in zip(TYPE_COLUMNS, row[1:]):
                out(step, "server id=%d %s=%s" % (row[0], name, fmt(value)))


# ---------------------------------------------------------------------------
# Step 2: a server-side prepared statement executed several times.
# ---------------------------------------------------------------------------

def step_prepared(conn):
    step = "prepared"
    query = ("SELECT %s::int * 2 AS doubled, upper(%s::text) AS up, "
             "%s::int + length(%s::text) AS total /* veil-prep */")
    params = [(1, "a"), (-7, "Zoë"), (0, ""), (2147483, "hello world"), (42, "x" * 100)]
    with conn.cursor() as cur:
        for number, text in params:
            # prepare=True makes psycopg prepare the statement on the server
            # (a named Parse) and reuse it for the following executions.
            # psycopg prepares one statement per set of parameter types and
            # picks int2/int4/int8 by magnitude, so pin the type to int4.
            cur.execute(query, (Int4(number), text, Int4(number), text), prepare=True)
            out(step, "params=%s result=%s" % (fmt([number, text]), fmt(list(cur.fetchone()))))
        # Count the prepared statements that carry our marker.  The marker is
        # assembled at run time so that this query does not match itself.
        cur.execute("SELECT count(*) FROM pg_prepared_statements "
                    "WHERE statement LIKE '%' || 'veil' || '-prep' || '%'")
        out(step, "server-side statements=%d" % cur.fetchone()[0])


# ---------------------------------------------------------------------------
# Step 3: commit, rollback and savepoints.
# ---------------------------------------------------------------------------

def step_tx(conn):
    step = "tx"
    conn.execute("CREATE TEMP TABLE veil_tx (id int)")

    def count():
        return conn.execute("SELECT count(*) FROM veil_tx").fetchone()[0]

    def status():
        # The transaction status comes from the server's ReadyForQuery message.
        return conn.info.transaction_status.name

    conn.execute("BEGIN")
    out(step, "after BEGIN status=%s" % status())
    conn.execute("INSERT INTO veil_tx VALUES (1)")
    conn.execute("ROLLBACK")
    out(step, "after ROLLBACK status=%s count=%d" % (status(), count()))

    conn.execute("BEGIN")
    conn.execute("INSERT INTO veil_tx VALUES (2)")
    conn.execute("COMMIT")
    out(step, "after COMMIT status=%s count=%d" % (status(), count()))

    # psycopg's own transaction API: the nested block becomes a savepoint
    # that is rolled back by the exception, the outer block commits.
    class Undo(Exception):
        pass

    with conn.transaction():
        conn.execute("INSERT INTO veil_tx VALUES (3)")
        try:
            with conn.transaction():
                conn.execute("INSERT INTO veil_tx VALUES (4)")
                raise Undo()
        except Undo:
            pass
        conn.execute("INSERT INTO veil_tx VALUES (5)")
    ids = [r[0] for r in conn.execute("SELECT id FROM veil_tx ORDER BY id")]
    out(step, "after savepoint rollback status=%s ids=%s" % (status(), fmt(ids)))

    # The same with explicit SQL savepoints.
    conn.execute("BEGIN")
    conn.execute("INSERT INTO veil_tx VALUES (6)")
    conn.execute("SAVEPOINT sp1")
    conn.execute("INSERT INTO veil_tx VALUES (7)")
    conn.execute("ROLLBACK TO SAVEPOINT sp1")
    conn.execute("RELEASE SAVEPOINT sp1")
    conn.execute("COMMIT")
    ids = [r[0] for r in conn.execute("SELECT id FROM veil_tx ORDER BY id")]
    out(step, "after SQL savepoint status=%s ids=%s" % (status(), fmt(ids)))


# ---------------------------------------------------------------------------
# Step 4: server errors and recovery from them.
# ---------------------------------------------------------------------------

def expect_error(conn, step, label, query, params=None):
    """Run a query that must fail and print its SQLSTATE and message."""
    try:
        conn.execute(query, params)
    except psycopg.Error as e:
        diag = e.diag
        out(step, "%s sqlstate=%s class=%s message=%s" % (
            label, e.sqlstate, type(e).__name__, fmt(diag.message_primary)))
        if diag.constraint_name:
            out(step, "%s constraint=%s" % (label, diag.constraint_name))
        return
    raise AssertionError("%s: query did not fail: %s" % (label, query))


def check_alive(conn, step, label):
    value = conn.execute("SELECT 1").fetchone()[0]
    out(step, "%s connection alive select1=%d status=%s" % (
        label, value, conn.info.transaction_status.name))


def step_errors(conn):
    step = "errors"
    expect_error(conn, step, "division", "SELECT 1/0")
    check_alive(conn, step, "division")
    expect_error(conn, step, "syntax", "SELEC 1")
    check_alive(conn, step, "syntax")
    conn.execute("CREATE TEMP TABLE veil_unique (id int CONSTRAINT veil_unique_pk PRIMARY KEY)")
    conn.execute("INSERT INTO veil_unique VALUES (%s)", (1,))
    expect_error(conn, step, "unique", "INSERT INTO veil_unique VALUES (%s)", (1,))
    check_alive(conn, step, "unique")

    # An error inside a transaction block aborts it; every later statement
    # fails with 25P02 until the block is rolled back.
    conn.execute("BEGIN")
    expect_error(conn, step, "in-tx", "SELECT 1/0")
    out(step, "in-tx status=%s" % conn.info.transaction_status.name)
    expect_error(conn, step, "aborted", "SELECT 1")
    conn.execute("ROLLBACK")
    check_alive(conn, step, "after-rollback")


# ---------------------------------------------------------------------------
# Step 5: COPY in and out in the text, CSV and binary formats.
# ---------------------------------------------------------------------------

def copy_row_values(i):
    """Deterministic values for COPY row i, including awkward characters."""
    name = "name %d" % i
    if i % 7 == 0:
        name += "\twith tab"
    if i % 11 == 0:
        name += "\nwith newline"
    if i % 13 == 0:
        name += ' "quoted", comma'
    if i % 17 == 0:
        name += " back\\slash"
    if i % 19 == 0:
        name += " Zoë ✓"
    amount = "%d.%02d" % ((i * 37) % 100000 - 50000, i % 100)
    flag = "t" if i % 2 == 0 else "f"
    note = None if i % 5 == 0 else ("" if i % 5 == 1 else "note-%d" % (i * i))
    return [str(i), name, amount, flag, note]


def text_escape(field):
    if field is None:
        return "\\N"
    return (field.replace("\\", "\\\\").replace("\t", "\\t")
            .replace("\n", "\\n").replace("\r", "\\r"))


def csv_escape(field):
    # An unquoted empty field is NULL in CSV; a quoted empty string is "".
    if field is None:
        return ""
    if field == "" or any(c in field for c in ',"\n\r'):
        return '"' + field.replace('"', '""') + '"'
    return field


def step_copy(conn):
    step = "copy"
    conn.execute("CREATE TEMP TABLE veil_copy (id int PRIMARY KEY, name text, "
                 "amount numeric(12,2), flag bool, note text)")

    text_data = "".join(
        "\t".join(text_escape(f) for f in copy_row_values(i)) + "\n"
        for i in range(1, 1001)).encode("utf-8")
    csv_data = "".join(
        ",".join(csv_escape(f) for f in copy_row_values(i)) + "\n"
        for i in range(1001, 2001)).encode("utf-8")

    with conn.cursor() as cur:
        # Send the input in uneven chunks so the proxy sees many CopyData messages.
        with cur.copy("COPY veil_copy FROM STDIN") as copy:
            for start in range(0, len(text_data), 4093):
                copy.write(text_data[start:start + 4093])
        out(step, "in text rows=%d" % cur.rowcount)
        with cur.copy("COPY veil_copy FROM STDIN WITH (FORMAT csv)") as copy:
            for start in range(0, len(csv_data), 8191):
                copy.write(csv_data[start:start + 8191])
        out(step, "in csv rows=%d" % cur.rowcount)

        cur.execute("SELECT count(*), sum(id), count(note), sum(length(name)) FROM veil_copy")
        out(step, "table summary=%s" % fmt(list(cur.fetchone())))

        for label, options in (("text", ""), ("csv", " WITH (FORMAT csv, HEADER)"),
                               ("binary", " WITH (FORMAT binary)")):
            chunks = []
            with cur.copy("COPY (SELECT * FROM veil_copy ORDER BY id) TO STDOUT" + options) as copy:
                for chunk in copy:
                    chunks.append(bytes(chunk))
            data = b"".join(chunks)
            out(step, "out %s rows=%d bytes=%d sha256=%s" % (
                label, cur.rowcount, len(data), sha256_hex(data)))

    # The text output must be exactly what we sent in for the first 1000 rows.
    with conn.cursor() as cur:
        chunks = []
        with cur.copy("COPY (SELECT * FROM veil_copy WHERE id <= 1000 ORDER BY id) TO STDOUT") as copy:
            for chunk in copy:
                chunks.append(bytes(chunk))
        out(step, "text round trip identical=%s" % fmt(b"".join(chunks) == text_data))


# ---------------------------------------------------------------------------
# Step 6: LISTEN / NOTIFY between two connections.
# ---------------------------------------------------------------------------

def step_notify(conn):
    step = "notify"
    # The channel name carries this run's token so that concurrent runs
    # against the same server cannot see each other's notifications. The
    # token is replaced by a placeholder in the transcript.
    channel = "veil_channel_" + RUN_TOKEN
    received = []
    conn.add_notify_handler(received.append)
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

    with connect() as sender:
        sender_pid = sender.execute("SELECT pg_backend_pid()").fetchone()[0]
        sender.execute(sql.SQL("NOTIFY {}, 'payload-1'").format(sql.Identifier(channel)))
        sender.execute("SELECT pg_notify(%s, %s)", (channel, "payload-2 Zoë ✓"))

        # psycopg 3.1 hands notifications to the handler whenever it reads
        # from the socket, so poll with a trivial query until both arrived.
        deadline = time.monotonic() + NOTIFY_TIMEOUT_SECONDS
        while len(received) < 2 and time.monotonic() < deadline:
            conn.execute("SELECT 1")
            if len(received) < 2:
                time.sleep(0.05)

    out(step, "received count=%d" % len(received))
    for n in received:
        # The pid is compared, never printed, so the transcript stays stable.
        out(step, "channel=%s payload=%s sender pid matches=%s" % (
            n.channel.replace(RUN_TOKEN, "<token>"), fmt(n.payload), fmt(n.pid == sender_pid)))
    conn.execute("UNLISTEN *")
    conn.remove_notify_handler(received.append)


# ---------------------------------------------------------------------------
# Step 7: cancelling a running query with the driver's cancel API.
# ---------------------------------------------------------------------------

def wait_until_active(monitor, marker):
    """Wait (at most a few seconds) until a query containing marker runs.

    PostgreSQL ignores a cancel request that arrives while the backend is
    still idle, waiting for the next command, so on a loaded machine a blind
    delay could cancel nothing. The monitor connection looks the query up in
    pg_stat_activity; if it never shows up (say, because a proxy changed the
    query text) we cancel anyway once the wait is over.
    """
    deadline = time.monotonic() + ACTIVE_WAIT_SECONDS
    while time.monotonic() < deadline:
        active = monitor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
            "AND pid <> pg_backend_pid() AND position(%s in query) > 0", (marker,)).fetchone()[0]
        if active:
            return
        time.sleep(0.05)


def step_cancel(conn):
    step = "cancel"
    marker = "veil-cancel-" + RUN_TOKEN
    failures = []

    def cancel_soon(monitor):
        try:
            time.sleep(0.5)
            wait_until_active(monitor, marker)
            # conn.cancel() sends a CancelRequest on a new connection to the
            # same host and port, using the key from BackendKeyData.
            conn.cancel()
        except Exception as e:  # Reported by the main thread below.
            failures.append(e)

    with connect() as monitor:
        canceller = threading.Thread(target=cancel_soon, args=(monitor,))
        start = time.monotonic()
        canceller.start()
        try:
            conn.execute("SELECT pg_sleep(30) /* %s */" % marker)
            raise AssertionError("pg_sleep(30) was not cancelled")
        except errors.QueryCanceled as e:
            elapsed = time.monotonic() - start
            out(step, "sqlstate=%s message=%s" % (e.sqlstate, fmt(e.diag.message_primary)))
            out(step, "cancel ok" if elapsed < CANCEL_LIMIT_SECONDS else "cancel too slow")
        finally:
            canceller.join()
    if failures:
        raise failures[0]
    check_alive(conn, step, "after-cancel")


# ---------------------------------------------------------------------------
# Step 8: a large result set, streamed through a server-side cursor.
# ---------------------------------------------------------------------------

def step_bigresult(conn):
    step = "bigresult"
    count = 0
    total = 0
    digest = hashlib.sha256()
    # A named cursor is a server-side cursor (DECLARE + FETCH); it needs a
    # transaction because the connection is in autocommit mode.
    with conn.transaction():
        with conn.cursor("veil_big") as cur:
            cur.itersize = 20000
            cur.execute("SELECT g, md5(g::text) FROM generate_series(1, 1000000) g")
            for g, md5 in cur:
                count += 1
                total += g
                digest.update(md5.encode("ascii"))
    out(step, "rows=%d sum=%d sha256(md5s)=%s" % (count, total, digest.hexdigest()))


# ---------------------------------------------------------------------------
# Step 9: 64 MiB values in both directions.
# ---------------------------------------------------------------------------

def step_bigvalue(conn):
    step = "bigvalue"
    size = 64 * 1024 * 1024
    value = conn.execute("SELECT repeat('x', %s)", (size,)).fetchone()[0]
    out(step, "result length=%d sha256=%s" % (len(value), sha256_hex(value.encode("ascii"))))
    del value

    # A 64 MiB parameter built from a repeating, non-trivial pattern.
    pattern = "pgveil-0123456789-abcdefghijklmnopqrstuvwxyz-Zoë✓\n"
    param = (pattern * (size // len(pattern) + 1))[:size]
    # The parameter is referenced once so that it is sent only once.
    length, md5 = conn.execute("SELECT length(v), md5(v) FROM (SELECT %s::text AS v) AS s",
                               (param,)).fetchone()
    local_md5 = hashlib.md5(param.encode("utf-8")).hexdigest()
    out(step, "param chars=%d length=%d md5=%s matches local=%s" % (
        len(param), length, md5, fmt(md5 == local_md5)))


def main():
    conn = connect()
    try:
        for name in ("client_encoding", "DateStyle", "integer_datetimes",
                     "standard_conforming_strings"):
            out("connect", "%s=%s" % (name, conn.info.parameter_status(name)))
        out("connect", "status=%s" % conn.info.transaction_status.name)
        step_types(conn)
        step_prepared(conn)
        step_tx(conn)
        step_errors(conn)
        step_copy(conn)
        step_notify(conn)
        step_cancel(conn)
        step_bigresult(conn)
        step_bigvalue(conn)
    finally:
        conn.close()
    out("done", "ok")


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc(file=sys.stderr)
        sys.exit(1)
