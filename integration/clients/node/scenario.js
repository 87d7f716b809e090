'use strict'

// Differential-test client scenario for pgveil, written against node-postgres
// (the "pg" package) and pg-copy-streams.
//
// The program connects with the standard libpq environment variables (PGHOST,
// PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE), runs a fixed list of
// steps and prints a transcript on standard output. The integration test runs
// it once directly against PostgreSQL and once through the proxy and compares
// the two transcripts byte for byte, so every line printed here must be fully
// deterministic: no timings, no backend process ids, no random values.
//
// Every transcript line starts with the name of the step that printed it. Any
// unexpected failure is printed on standard error and the exit code is 1.
//
// Run it after "npm ci" (or "npm install") in this directory:
//
//     node integration/clients/node/scenario.js

// node-postgres turns date and timestamp values into JavaScript Dates in the
// process's local time zone, so pin that zone before anything creates a Date.
process.env.TZ = 'UTC'

const crypto = require('crypto')
const net = require('net')
const { pipeline } = require('stream/promises')
const { Readable, Writable } = require('stream')
const pg = require('pg')
const copyStreams = require('pg-copy-streams')

// How long we are willing to wait for notifications, for the query to be
// cancelled to show up as running, and for the cancelled query to return.
const NOTIFY_TIMEOUT_MS = 5000
const ACTIVE_WAIT_MS = 5000
const CANCEL_LIMIT_MS = 10000

// A random token for this run. It only ever appears in names that other
// sessions could see (the NOTIFY channel, the text of the cancelled query)
// and is never printed.
const RUN_TOKEN = crypto.randomBytes(6).toString('hex')

// out prints one transcript line that starts with the step name.
function out(step, text) {
  process.stdout.write(`${step}: ${text}\n`)
}

// connectionConfig builds the client configuration from the PG* variables.
// The SSL setting is derived here rather than left to node-postgres, because
// its own reading of PGSSLMODE=require also verifies the server certificate,
// which libpq's "require" does not.
function connectionConfig() {
  const env = process.env
  const sslmode = env.PGSSLMODE || 'disable'
  let ssl
  switch (sslmode) {
    case 'disable':
    case 'allow':
    case 'prefer':
      ssl = false
      break
    case 'require':
      ssl = { rejectUnauthorized: false }
      break
    case 'verify-ca':
    case 'verify-full':
      ssl = true
      break
    default:
      throw new Error(`unsupported PGSSLMODE ${sslmode}`)
  }
  const user = env.PGUSER || env.USER || 'postgres'
  return {
    host: env.PGHOST || 'localhost',
    port: parseInt(env.PGPORT || '5432', 10),
    user,
    password: env.PGPASSWORD,
    database: env.PGDATABASE || user,
    ssl,
  }
}

async function connect() {
  const client = new pg.Client(connectionConfig())
  await client.connect()
  return client
}

// fmt renders a value decoded by node-postgres in a canonical, typed text form.
function fmt(value) {
  if (value === null || value === undefined) {
    return 'NULL'
  }
  if (typeof value === 'boolean') {
    return value ? 'true' : 'false'
  }
  if (typeof value === 'number') {
    return `num:${String(value)}`
  }
  if (typeof value === 'bigint') {
    return `bigint:${value.toString()}`
  }
  if (typeof value === 'string') {
    return `str:${JSON.stringify(value)}`
  }
  if (Buffer.isBuffer(value)) {
    return `bytes:\\x${value.toString('hex')}`
  }
  if (value instanceof Date) {
    return `date:${value.toISOString()}`
  }
  if (Array.isArray(value)) {
    return `[${value.map(fmt).join(', ')}]`
  }
  if (value.constructor && value.constructor.name === 'PostgresInterval') {
    // postgres-interval objects can render themselves in PostgreSQL's syntax.
    return `interval:${value.toPostgres()}`
  }
  // Anything else is a parsed JSON document; keep the server's key order.
  return `json:${JSON.stringify(value)}`
}

function sha256Hex(data) {
  return crypto.createHash('sha256').update(data).digest('hex')
}

// ---------------------------------------------------------------------------
// Step 1: a round trip of many column types through bound parameters.
// ---------------------------------------------------------------------------

const TYPE_COLUMNS = [
  ['c_smallint', 'smallint'],
  ['c_int', 'int'],
  ['c_bigint', 'bigint'],
  ['c_numeric', 'numeric(20,6)'],
  ['c_real', 'real'],
  ['c_double', 'double precision'],
  ['c_text', 'text'],
  ['c_varchar', 'varchar(20)'],
  ['c_char', 'char(3)'],
  ['c_bool', 'bool'],
  ['c_date', 'date'],
  ['c_ts', 'timestamp'],
  ['c_tstz', 'timestamptz'],
  ['c_interval', 'interval'],
  ['c_uuid', 'uuid'],
  ['c_json', 'json'],
  ['c_jsonb', 'jsonb'],
  ['c_bytea', 'bytea'],
  ['c_intarr', 'int[]'],
  ['c_textarr', 'text[]'],
  ['c_inet', 'inet'],
]

// Each row lists the values in the order of TYPE_COLUMNS. node-postgres
// sends every parameter as text except Buffers, which go out in binary
// format. 64-bit integers are given as strings because a JavaScript number
// cannot hold them exactly. JSON values are given as strings because the
// driver would turn a JavaScript array into a PostgreSQL array literal.
const TYPE_ROWS = [
  [
    1,
    [
      -32768,
      -2147483648,
      '-9223372036854775808',
      '-12345678901234.123456',
      -1.5,
      -1.2345678901234567e300,
      'Zoë ✓',
      'tab\there',
      'ab',
      true,
      '2024-02-29',
      '2024-02-29 13:45:56.123456',
      '2024-02-29 13:45:56.123456+02',
      '1 year 2 mons 3 days 04:05:06.789',
      'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
      JSON.stringify({ b: 1, a: [1, 2, 'Zoë'] }),
      { nested: { k: [true, false, null] }, a: 1 },
      Buffer.from([0x00, 0x01, 0x00, 0xff, 0x5c, 0x27]),
      [1, null, -3],
      ['a b', '', 'Zoë', null, 'with "quote"', 'back\\slash', 'NULL'],
      '192.168.0.1/24',
    ],
  ],
  [
    2,
    [
      32767,
      2147483647,
      '9223372036854775807',
      '99999999999999.999999',
      3.25,
      3.141592653589793,
      '',
      'exactly-twenty-chars',
      'z',
      false,
      '1999-12-31',
      '2000-01-01 00:00:00',
      new Date(0),
      '-00:00:01.5',
      '00000000-0000-0000-0000-000000000000',
      '[]',
      {},
      Buffer.alloc(0),
      [7],
      ['single'],
      '::1/128',
    ],
  ],
  // The third row is NULL in every column.
  [3, TYPE_COLUMNS.map(() => null)],
]

async function stepTypes(client) {
  const step = 'types'
  await client.query("SET TimeZone TO 'UTC'")
  const tz = await client.query('SHOW TimeZone')
  out(step, `TimeZone ${tz.rows[0].TimeZone}`)
  const ddl = TYPE_COLUMNS.map(([name, type]) => `${name} ${type}`).join(', ')
  await client.query(`CREATE TEMP TABLE veil_types (id int PRIMARY KEY, ${ddl})`)

  const names = TYPE_COLUMNS.map(([name]) => name).join(', ')
  const placeholders = TYPE_COLUMNS.map((_, i) => `$${i + 2}`).join(', ')
  const insert = `INSERT INTO veil_types (id, ${names}) VALUES ($1, ${placeholders})`
  for (const [id, values] of TYPE_ROWS) {
    const res = await client.query(insert, [id, ...values])
    out(step, `insert id=${id} rowcount=${res.rowCount}`)
  }

  // Read the rows back as decoded by the driver (text result format).
  const res = await client.query({ text: `SELECT id, ${names} FROM veil_types ORDER BY id`, rowMode: 'array' })
  out(step, `columns ${res.fields.map((f) => `${f.name}:${f.dataTypeID}`).join(' ')}`)
  for (const row of res.rows) {
    TYPE_COLUMNS.forEach(([name], i) => {
      out(step, `driver id=${row[0]} ${name}=${fmt(row[i + 1])}`)
    })
  }

  // The server's own text rendering of every column, as a stable reference.
  const casts = TYPE_COLUMNS.map(([name]) => `${name}::text`).join(', ')
  const text = await client.query({ text: `SELECT id, ${casts} FROM veil_types ORDER BY id`, rowMode: 'array' })
  for (const row of text.rows) {
    TYPE_COLUMNS.forEach(([name], i) => {
      out(step, `server id=${row[0]} ${name}=${fmt(row[i + 1])}`)
    })
  }
}

// ---------------------------------------------------------------------------
// Step 2: a server-side prepared statement executed several times.
// ---------------------------------------------------------------------------

async function stepPrepared(client) {
  const step = 'prepared'
  const text =
    'SELECT $1::int * 2 AS doubled, upper($2::text) AS up, ' + '$1::int + length($2::text) AS total /* veil-prep */'
  const params = [
    [1, 'a'],
    [-7, 'Zoë'],
    [0, ''],
    [2147483, 'hello world'],
    [42, 'x'.repeat(100)],
  ]
  for (const values of params) {
    // A named query is parsed once on the server under that name; later
    // executions only send Bind and Execute.
    const res = await client.query({ name: 'veil_prep', text, values, rowMode: 'array' })
    out(step, `params=${fmt(values)} result=${fmt(res.rows[0])}`)
  }
  // Count the prepared statements that carry our marker. The marker is
  // assembled at run time so that this query does not match itself.
  const res = await client.query(
    "SELECT count(*)::int AS n FROM pg_prepared_statements WHERE statement LIKE '%' || 'veil' || '-prep' || '%'"
  )
  out(step, `server-side statements=${res.rows[0].n}`)
}

// ---------------------------------------------------------------------------
// Step 3: commit, rollback and savepoints.
// ---------------------------------------------------------------------------

async function stepTx(client) {
  const step = 'tx'
  await client.query('CREATE TEMP TABLE veil_tx (id int)')
  const count = async () => (await client.query('SELECT count(*)::int AS n FROM veil_tx')).rows[0].n
  const ids = async () => (await client.query({ text: 'SELECT id FROM veil_tx ORDER BY id', rowMode: 'array' })).rows.map((r) => r[0])
  // The transaction status letter comes from the server's ReadyForQuery message.
  const status = () => client.getTransactionStatus()

  await client.query('BEGIN')
  out(step, `after BEGIN status=${status()}`)
  await client.query('INSERT INTO veil_tx VALUES (1)')
  await client.query('ROLLBACK')
  out(step, `after ROLLBACK status=${status()} count=${await count()}`)

  await client.query('BEGIN')
  await client.query('INSERT INTO veil_tx VALUES ($1)', [2])
  await client.query('COMMIT')
  out(step, `after COMMIT status=${status()} count=${await count()}`)

  await client.query('BEGIN')
  await client.query('INSERT INTO veil_tx VALUES (3)')
  await client.query('SAVEPOINT sp1')
  await client.query('INSERT INTO veil_tx VALUES (4)')
  await client.query('ROLLBACK TO SAVEPOINT sp1')
  await client.query('INSERT INTO veil_tx VALUES (5)')
  await client.query('COMMIT')
  out(step, `after savepoint rollback status=${status()} ids=${fmt(await ids())}`)
}

// ---------------------------------------------------------------------------
// Step 4: server errors and recovery from them.
// ---------------------------------------------------------------------------

// expectError runs a query that must fail and prints its SQLSTATE and message.
async function expectError(client, step, label, text, values) {
  try {
    await client.query(text, values)
  } catch (err) {
    if (!err.code) {
      throw err
    }
    out(step, `${label} sqlstate=${err.code} severity=${err.severity} message=${fmt(err.message)}`)
    if (err.constraint) {
      out(step, `${label} constraint=${err.constraint}`)
    }
    return
  }
  throw new Error(`${label}: query did not fail: ${text}`)
}

async function checkAlive(client, step, label) {
  const res = await client.query('SELECT 1 AS one')
  out(step, `${label} connection alive select1=${res.rows[0].one} status=${client.getTransactionStatus()}`)
}

async function stepErrors(client) {
  const step = 'errors'
  await expectError(client, step, 'division', 'SELECT 1/0')
  await checkAlive(client, step, 'division')
  await expectError(client, step, 'syntax', 'SELEC 1')
  await checkAlive(client, step, 'syntax')
  await client.query('CREATE TEMP TABLE veil_unique (id int CONSTRAINT veil_unique_pk PRIMARY KEY)')
  await client.query('INSERT INTO veil_unique VALUES ($1)', [1])
  await expectError(client, step, 'unique', 'INSERT INTO veil_unique VALUES ($1)', [1])
  await checkAlive(client, step, 'unique')

  // An error inside a transaction block aborts it; every later statement
  // fails with 25P02 until the block is rolled back.
  await client.query('BEGIN')
  await expectError(client, step, 'in-tx', 'SELECT 1/0')
  // The transaction status is deliberately not printed here. node-postgres
  // rejects a failed query as soon as the ErrorResponse arrives, so whether
  // the following ReadyForQuery has been read yet depends on how the bytes
  // were split into socket reads, which is not deterministic.
  await expectError(client, step, 'aborted', 'SELECT 1')
  await client.query('ROLLBACK')
  await checkAlive(client, step, 'after-rollback')
}

// ---------------------------------------------------------------------------
// Step 5: COPY in and out in the text, CSV and binary formats.
// ---------------------------------------------------------------------------

// copyRowValues returns deterministic values for COPY row i, including
// awkward characters; null stands for SQL NULL.
function copyRowValues(i) {
  let name = `name ${i}`
  if (i % 7 === 0) name += '\twith tab'
  if (i % 11 === 0) name += '\nwith newline'
  if (i % 13 === 0) name += ' "quoted", comma'
  if (i % 17 === 0) name += ' back\\slash'
  if (i % 19 === 0) name += ' Zoë ✓'
  const cents = String(i % 100).padStart(2, '0')
  const amount = `${((i * 37) % 100000) - 50000}.${cents}`
  const flag = i % 2 === 0 ? 't' : 'f'
  const note = i % 5 === 0 ? null : i % 5 === 1 ? '' : `note-${i * i}`
  return [String(i), name, amount, flag, note]
}

function textEscape(field) {
  if (field === null) return '\\N'
  return field.replace(/\\/g, '\\\\').replace(/\t/g, '\\t').replace(/\n/g, '\\n').replace(/\r/g, '\\r')
}

// In CSV an unquoted empty field is NULL and a quoted empty string is ''.
function csvEscape(field) {
  if (field === null) return ''
  if (field === '' || /[,"\n\r]/.test(field)) return `"${field.replace(/"/g, '""')}"`
  return field
}

// chunked splits a buffer into pieces of the given size, so that the proxy
// sees many CopyData messages whose boundaries do not match row boundaries.
function chunked(buffer, size) {
  const pieces = []
  for (let start = 0; start < buffer.length; start += size) {
    pieces.push(buffer.subarray(start, start + size))
  }
  return pieces
}

async function copyIn(client, sql, data, chunkSize) {
  const stream = client.query(copyStreams.from(sql))
  await pipeline(Readable.from(chunked(data, chunkSize)), stream)
  return stream.rowCount
}

async function copyOut(client, sql) {
  const stream = client.query(copyStreams.to(sql))
  const chunks = []
  await pipeline(
    stream,
    new Writable({
      write(chunk, _encoding, callback) {
        chunks.push(chunk)
        callback()
      },
    })
  )
  return { data: Buffer.concat(chunks), rows: stream.rowCount }
}

async function stepCopy(client) {
  const step = 'copy'
  await client.query(
    'CREATE TEMP TABLE veil_copy (id int PRIMARY KEY, name text, amount numeric(12,2), flag bool, note text)'
  )
  const range = (from, to) => Array.from({ length: to - from + 1 }, (_, k) => from + k)
  const textData = Buffer.from(
    range(1, 1000).map((i) => copyRowValues(i).map(textEscape).join('\t') + '\n').join(''),
    'utf8'
  )
  const csvData = Buffer.from(
    range(1001, 2000).map((i) => copyRowValues(i).map(csvEscape).join(',') + '\n').join(''),
    'utf8'
  )
  out(step, `in text rows=${await copyIn(client, 'COPY veil_copy FROM STDIN', textData, 4093)}`)
  out(step, `in csv rows=${await copyIn(client, 'COPY veil_copy FROM STDIN WITH (FORMAT csv)', csvData, 8191)}`)

  const summary = await client.query({
    text: 'SELECT count(*)::int, sum(id)::int, count(note)::int, sum(length(name))::int FROM veil_copy',
    rowMode: 'array',
  })
  out(step, `table summary=${fmt(summary.rows[0])}`)

  const formats = [
    ['text', ''],
    ['csv', ' WITH (FORMAT csv, HEADER)'],
    ['binary', ' WITH (FORMAT binary)'],
  ]
  for (const [label, options] of formats) {
    const { data, rows } = await copyOut(client, `COPY (SELECT * FROM veil_copy ORDER BY id) TO STDOUT${options}`)
    out(step, `out ${label} rows=${rows} bytes=${data.length} sha256=${sha256Hex(data)}`)
  }

  // The text output must be exactly what we sent in for the first 1000 rows.
  const { data } = await copyOut(client, 'COPY (SELECT * FROM veil_copy WHERE id <= 1000 ORDER BY id) TO STDOUT')
  out(step, `text round trip identical=${fmt(data.equals(textData))}`)
}

// ---------------------------------------------------------------------------
// Step 6: LISTEN / NOTIFY between two connections.
// ---------------------------------------------------------------------------

async function stepNotify(client) {
  const step = 'notify'
  // The channel name carries this run's token so that concurrent runs against
  // the same server cannot see each other's notifications. The token is
  // replaced by a placeholder in the transcript.
  const channel = `veil_channel_${RUN_TOKEN}`
  const received = []
  let wake = () => {}
  const onNotification = (msg) => {
    received.push(msg)
    wake()
  }
  client.on('notification', onNotification)
  await client.query(`LISTEN ${channel}`)

  const sender = await connect()
  let senderPid
  try {
    senderPid = (await sender.query('SELECT pg_backend_pid() AS pid')).rows[0].pid
    await sender.query(`NOTIFY ${channel}, 'payload-1'`)
    await sender.query('SELECT pg_notify($1, $2)', [channel, 'payload-2 Zoë ✓'])
  } finally {
    await sender.end()
  }

  // node-postgres reads notifications as soon as they arrive, even while the
  // connection is idle, so just wait for them (with a time limit).
  const deadline = Date.now() + NOTIFY_TIMEOUT_MS
  while (received.length < 2 && Date.now() < deadline) {
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, Math.max(0, deadline - Date.now()))
      wake = () => {
        clearTimeout(timer)
        resolve()
      }
    })
  }
  client.removeListener('notification', onNotification)

  out(step, `received count=${received.length}`)
  for (const msg of received) {
    // The pid is compared, never printed, so the transcript stays stable.
    const name = msg.channel.replace(RUN_TOKEN, '<token>')
    out(step, `channel=${name} payload=${fmt(msg.payload)} sender pid matches=${fmt(msg.processId === senderPid)}`)
  }
  await client.query('UNLISTEN *')
}

// ---------------------------------------------------------------------------
// Step 7: cancelling a running query with a CancelRequest.
// ---------------------------------------------------------------------------

// sendCancelRequest opens a fresh connection to the same server and sends a
// CancelRequest: length 16, the code 80877102, then the process id and secret
// key that the server sent in BackendKeyData. node-postgres has no public
// cancel API, so this is written out by hand. Like libpq, it is sent without
// TLS; the server answers by closing the connection.
function sendCancelRequest(config, processID, secretKey) {
  return new Promise((resolve, reject) => {
    const packet = Buffer.alloc(16)
    packet.writeInt32BE(16, 0)
    packet.writeInt32BE(80877102, 4)
    packet.writeInt32BE(processID, 8)
    packet.writeInt32BE(secretKey, 12)
    const socket = config.host.startsWith('/')
      ? net.connect(`${config.host}/.s.PGSQL.${config.port}`)
      : net.connect(config.port, config.host)
    socket.on('connect', () => socket.end(packet))
    socket.on('error', reject)
    socket.on('close', () => resolve())
    socket.resume()
  })
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// waitUntilActive waits (at most a few seconds) until a query containing
// marker is running. PostgreSQL ignores a cancel request that arrives while
// the backend is still idle, waiting for the next command, so on a loaded
// machine a blind delay could cancel nothing. The monitor connection looks
// the query up in pg_stat_activity; if it never shows up (say, because a
// proxy changed the query text) we cancel anyway once the wait is over.
async function waitUntilActive(monitor, marker) {
  const deadline = Date.now() + ACTIVE_WAIT_MS
  while (Date.now() < deadline) {
    const res = await monitor.query(
      "SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'active' " +
        'AND pid <> pg_backend_pid() AND position($1 in query) > 0',
      [marker]
    )
    if (res.rows[0].n > 0) {
      return
    }
    await sleep(50)
  }
}

async function stepCancel(client) {
  const step = 'cancel'
  const marker = `veil-cancel-${RUN_TOKEN}`
  const monitor = await connect()
  try {
    const started = Date.now()
    const query = client.query(`SELECT pg_sleep(30) /* ${marker} */`)
    const cancel = (async () => {
      await sleep(500)
      await waitUntilActive(monitor, marker)
      await sendCancelRequest(connectionConfig(), client.processID, client.secretKey)
    })()
    try {
      await query
      throw new Error('pg_sleep(30) was not cancelled')
    } catch (err) {
      if (err.code !== '57014') {
        throw err
      }
      const elapsed = Date.now() - started
      out(step, `sqlstate=${err.code} message=${fmt(err.message)}`)
      out(step, elapsed < CANCEL_LIMIT_MS ? 'cancel ok' : 'cancel too slow')
    } finally {
      // Surfaces any failure of the cancel itself.
      await cancel
    }
  } finally {
    await monitor.end()
  }
  await checkAlive(client, step, 'after-cancel')
}

// ---------------------------------------------------------------------------
// Step 8: a large result set.
// ---------------------------------------------------------------------------

async function stepBigresult(client) {
  const step = 'bigresult'
  // pg-cursor is not available, so the whole result is buffered; memory is
  // plentiful for one million small rows.
  const res = await client.query({
    text: 'SELECT g, md5(g::text) FROM generate_series(1, 1000000) g',
    rowMode: 'array',
  })
  const hash = crypto.createHash('sha256')
  let sum = 0
  for (const [g, md5] of res.rows) {
    sum += g
    hash.update(md5, 'ascii')
  }
  out(step, `rows=${res.rows.length} sum=${sum} sha256(md5s)=${hash.digest('hex')}`)
}

// ---------------------------------------------------------------------------
// Step 9: 64 MiB values in both directions.
// ---------------------------------------------------------------------------

async function stepBigvalue(client) {
  const step = 'bigvalue'
  const size = 64 * 1024 * 1024
  const res = await client.query({ text: "SELECT repeat('x', $1)", values: [size], rowMode: 'array' })
  const value = res.rows[0][0]
  out(step, `result length=${value.length} sha256=${sha256Hex(Buffer.from(value, 'ascii'))}`)

  // A 64 MiB parameter built from a repeating, non-trivial pattern. It is
  // referenced once in the query so that it is sent only once.
  const pattern = 'pgveil-0123456789-abcdefghijklmnopqrstuvwxyz-Zoë✓\n'
  // String.length counts UTF-16 units; every character of the pattern is in
  // the basic plane, so it equals the character count the server reports.
  const param = pattern.repeat(Math.floor(size / pattern.length) + 1).slice(0, size)
  const check = await client.query({
    text: 'SELECT length(v), md5(v) FROM (SELECT $1::text AS v) AS s',
    values: [param],
    rowMode: 'array',
  })
  const [length, md5] = check.rows[0]
  const localMd5 = crypto.createHash('md5').update(param, 'utf8').digest('hex')
  out(step, `param chars=${param.length} length=${length} md5=${md5} matches local=${fmt(md5 === localMd5)}`)
}

async function main() {
  const client = await connect()
  try {
    const show = await client.query(
      "SELECT current_setting('client_encoding') AS ce, current_setting('DateStyle') AS ds, " +
        "current_setting('integer_datetimes') AS idt, current_setting('standard_conforming_strings') AS scs"
    )
    const s = show.rows[0]
    out('connect', `client_encoding=${s.ce}`)
    out('connect', `DateStyle=${s.ds}`)
    out('connect', `integer_datetimes=${s.idt}`)
    out('connect', `standard_conforming_strings=${s.scs}`)
    out('connect', `status=${client.getTransactionStatus()}`)
    await stepTypes(client)
    await stepPrepared(client)
    await stepTx(client)
    await stepErrors(client)
    await stepCopy(client)
    await stepNotify(client)
    await stepCancel(client)
    await stepBigresult(client)
    await stepBigvalue(client)
  } finally {
    await client.end()
  }
  out('done', 'ok')
}

main().catch((err) => {
  process.stderr.write(`scenario failed: ${err && err.stack ? err.stack : err}\n`)
  // Exit at once: a connection left open by the failure must not keep the
  // process alive. Writes to pipes and files are synchronous on Linux.
  process.exit(1)
})
