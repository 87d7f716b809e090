// Differential-test client scenario for pgveil, written against pgjdbc.
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
// It is run as a single-file source program (Java 11 or later) with Debian's
// libpostgresql-jdbc-java on the class path:
//
//     java -cp /usr/share/java/postgresql.jar integration/clients/jdbc/Scenario.java

import java.io.BufferedOutputStream;
import java.io.ByteArrayOutputStream;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.PrintStream;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.SecureRandom;
import java.sql.Array;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Savepoint;
import java.sql.Statement;
import java.sql.Types;
import java.time.LocalDate;
import java.time.LocalDateTime;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HexFormat;
import java.util.List;
import java.util.Properties;
import java.util.TimeZone;
import java.util.UUID;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.TimeUnit;

import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.copy.CopyIn;
import org.postgresql.copy.CopyManager;
import org.postgresql.copy.CopyOut;
import org.postgresql.core.BaseConnection;
import org.postgresql.util.PGInterval;
import org.postgresql.util.PGobject;
import org.postgresql.util.PSQLException;
import org.postgresql.util.ServerErrorMessage;

public class Scenario {
    // How long we are willing to wait for notifications, for the query to be
    // cancelled to show up as running, and for the cancelled query to return.
    static final long NOTIFY_TIMEOUT_MILLIS = 5000;
    static final long ACTIVE_WAIT_MILLIS = 5000;
    static final long CANCEL_LIMIT_MILLIS = 10000;

    // A random token for this run. It only ever appears in names that other
    // sessions could see (the NOTIFY channel, the text of the cancelled query)
    // and is never printed.
    static final String RUN_TOKEN = randomHex(6);

    static String randomHex(int bytes) {
        byte[] buffer = new byte[bytes];
        new SecureRandom().nextBytes(buffer);
        return HexFormat.of().formatHex(buffer);
    }

    // The transcript is always UTF-8 with "\n" line endings, whatever the
    // platform defaults of the JVM that runs us happen to be.
    static final PrintStream OUT = new PrintStream(
            new BufferedOutputStream(new FileOutputStream(FileDescriptor.out), 1 << 16),
            false, StandardCharsets.UTF_8);

    public static void main(String[] args) {
        // pgjdbc sends the JVM's default time zone at startup and uses it to
        // convert java.sql temporal values, so pin it to UTC.
        TimeZone.setDefault(TimeZone.getTimeZone("UTC"));
        try {
            run();
            OUT.flush();
        } catch (Throwable t) {
            OUT.flush();
            t.printStackTrace();
            System.exit(1);
        }
        // Exit explicitly so that no leftover driver thread keeps the JVM alive.
        System.exit(0);
    }

    /** Prints one transcript line that starts with the step name. */
    static void out(String step, String text) {
        OUT.print(step + ": " + text + "\n");
    }

    /** Opens a new connection configured from the PG* environment variables. */
    static Connection connect() throws SQLException {
        String host = env("PGHOST", "localhost");
        String port = env("PGPORT", "5432");
        String user = env("PGUSER", env("USER", "postgres"));
        String database = env("PGDATABASE", user);
        String sslmode = env("PGSSLMODE", "disable");
        if (host.contains(":") && !host.startsWith("[")) {
            host = "[" + host + "]"; // An IPv6 literal needs brackets in the URL.
        }
        Properties props = new Properties();
        props.setProperty("user", user);
        String password = System.getenv("PGPASSWORD");
        if (password != null) {
            props.setProperty("password", password);
        }
        props.setProperty("sslmode", sslmode);
        if (sslmode.equals("require")) {
            // Like libpq's "require": encrypt, but do not verify the certificate.
            props.setProperty("sslfactory", "org.postgresql.ssl.NonValidatingFactory");
        }
        // Use a server-side (named) prepared statement from the first execution.
        props.setProperty("prepareThreshold", "1");
        String url = "jdbc:postgresql://" + host + ":" + port + "/" + database;
        return DriverManager.getConnection(url, props);
    }

    static String env(String name, String fallback) {
        String value = System.getenv(name);
        return value == null || value.isEmpty() ? fallback : value;
    }

    /** Renders a value decoded by pgjdbc in a canonical, typed text form. */
    static String fmt(Object value) throws SQLException {
        if (value == null) {
            return "NULL";
        }
        if (value instanceof String) {
            return "str:" + quote((String) value);
        }
        if (value instanceof byte[]) {
            return "bytes:\\x" + HexFormat.of().formatHex((byte[]) value);
        }
        if (value instanceof BigDecimal) {
            return "dec:" + ((BigDecimal) value).toPlainString();
        }
        if (value instanceof Array) {
            return fmt(((Array) value).getArray());
        }
        if (value instanceof Object[]) {
            List<String> parts = new ArrayList<>();
            for (Object element : (Object[]) value) {
                parts.add(fmt(element));
            }
            return "[" + String.join(", ", parts) + "]";
        }
        if (value instanceof PGInterval) {
            return "interval:" + ((PGInterval) value).getValue();
        }
        if (value instanceof PGobject) {
            PGobject object = (PGobject) value;
            return object.getType() + ":" + object.getValue();
        }
        // Numbers, booleans, UUIDs and java.time values print well by themselves;
        // the class name shows which Java type the driver chose.
        return value.getClass().getSimpleName() + ":" + value;
    }

    /** Quotes a string in JSON style, so empty strings and control characters show. */
    static String quote(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"': b.append("\\\""); break;
                case '\\': b.append("\\\\"); break;
                case '\n': b.append("\\n"); break;
                case '\t': b.append("\\t"); break;
                case '\r': b.append("\\r"); break;
                default:
                    if (c < 0x20) {
                        b.append(String.format("\\u%04x", (int) c));
                    } else {
                        b.append(c);
                    }
            }
        }
        return b.append('"').toString();
    }

    static String sha256Hex(byte[] data) throws Exception {
        return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(data));
    }

    static void run() throws Exception {
        try (Connection conn = connect()) {
            PGConnection pg = conn.unwrap(PGConnection.class);
            for (String name : new String[] {"client_encoding", "DateStyle", "integer_datetimes",
                    "standard_conforming_strings"}) {
                out("connect", name + "=" + pg.getParameterStatus(name));
            }
            out("connect", "status=" + status(conn));
            stepTypes(conn);
            stepPrepared(conn);
            stepTx(conn);
            stepErrors(conn);
            stepCopy(conn);
            stepNotify(conn);
            stepCancel(conn);
            stepBigresult(conn);
            stepBigvalue(conn);
        }
        out("done", "ok");
    }

    /** The transaction state, as tracked from the server's ReadyForQuery messages. */
    static String status(Connection conn) throws SQLException {
        return conn.unwrap(BaseConnection.class).getTransactionState().name();
    }

    // -----------------------------------------------------------------------
    // Step 1: a round trip of many column types through bound parameters.
    // -----------------------------------------------------------------------

    /** Column name, SQL type, and the JDBC type used to bind a NULL. */
    static final Object[][] TYPE_COLUMNS = {
        {"c_smallint", "smallint", Types.SMALLINT},
        {"c_int", "int", Types.INTEGER},
        {"c_bigint", "bigint", Types.BIGINT},
        {"c_numeric", "numeric(20,6)", Types.NUMERIC},
        {"c_real", "real", Types.REAL},
        {"c_double", "double precision", Types.DOUBLE},
        {"c_text", "text", Types.VARCHAR},
        {"c_varchar", "varchar(20)", Types.VARCHAR},
        {"c_char", "char(3)", Types.CHAR},
        {"c_bool", "bool", Types.BOOLEAN},
        {"c_date", "date", Types.DATE},
        {"c_ts", "timestamp", Types.TIMESTAMP},
        {"c_tstz", "timestamptz", Types.TIMESTAMP_WITH_TIMEZONE},
        {"c_interval", "interval", Types.OTHER},
        {"c_uuid", "uuid", Types.OTHER},
        {"c_json", "json", Types.OTHER},
        {"c_jsonb", "jsonb", Types.OTHER},
        {"c_bytea", "bytea", Types.BINARY},
        {"c_intarr", "int[]", Types.ARRAY},
        {"c_textarr", "text[]", Types.ARRAY},
        {"c_inet", "inet", Types.OTHER},
    };

    static PGobject pgObject(String type, String value) throws SQLException {
        PGobject object = new PGobject();
        object.setType(type);
        object.setValue(value);
        return object;
    }

    /** Binds the values of row id (1 or 2), or NULL in every column when nulls is true. */
    static void bindRow(Connection conn, PreparedStatement ps, int id, boolean nulls) throws SQLException {
        ps.setInt(1, id);
        if (nulls) {
            for (int i = 0; i < TYPE_COLUMNS.length; i++) {
                ps.setNull(i + 2, (Integer) TYPE_COLUMNS[i][2]);
            }
            return;
        }
        boolean first = id == 1;
        int p = 2;
        ps.setShort(p++, first ? Short.MIN_VALUE : Short.MAX_VALUE);
        ps.setInt(p++, first ? Integer.MIN_VALUE : Integer.MAX_VALUE);
        ps.setLong(p++, first ? Long.MIN_VALUE : Long.MAX_VALUE);
        ps.setBigDecimal(p++, new BigDecimal(first ? "-12345678901234.123456" : "99999999999999.999999"));
        ps.setFloat(p++, first ? -1.5f : 3.25f);
        ps.setDouble(p++, first ? -1.2345678901234567e300 : 3.141592653589793);
        ps.setString(p++, first ? "Zoë ✓" : "");
        ps.setString(p++, first ? "tab\there" : "exactly-twenty-chars");
        ps.setString(p++, first ? "ab" : "z");
        ps.setBoolean(p++, first);
        ps.setObject(p++, first ? LocalDate.of(2024, 2, 29) : LocalDate.of(1999, 12, 31));
        ps.setObject(p++, first ? LocalDateTime.of(2024, 2, 29, 13, 45, 56, 123456000)
                : LocalDateTime.of(2000, 1, 1, 0, 0, 0));
        ps.setObject(p++, first ? OffsetDateTime.of(2024, 2, 29, 13, 45, 56, 123456000, ZoneOffset.ofHours(2))
                : OffsetDateTime.of(1970, 1, 1, 0, 0, 0, 0, ZoneOffset.UTC));
        ps.setObject(p++, new PGInterval(first ? "1 year 2 mons 3 days 04:05:06.789" : "-00:00:01.5"));
        ps.setObject(p++, UUID.fromString(first ? "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
                : "00000000-0000-0000-0000-000000000000"));
        // A string bound as Types.OTHER goes out with an unspecified type, so
        // the server parses it as the column's type (json here).
        ps.setObject(p++, first ? "{\"b\": 1, \"a\": [1, 2, \"Zoë\"]}" : "[]", Types.OTHER);
        ps.setObject(p++, pgObject("jsonb", first ? "{\"nested\": {\"k\": [true, false, null]}, \"a\": 1}" : "{}"));
        ps.setBytes(p++, first ? new byte[] {0x00, 0x01, 0x00, (byte) 0xff, 0x5c, 0x27} : new byte[0]);
        ps.setArray(p++, conn.createArrayOf("int4", first ? new Integer[] {1, null, -3} : new Integer[] {7}));
        ps.setArray(p++, conn.createArrayOf("text", first
                ? new String[] {"a b", "", "Zoë", null, "with \"quote\"", "back\\slash", "NULL"}
                : new String[] {"single"}));
        ps.setObject(p++, pgObject("inet", first ? "192.168.0.1/24" : "::1/128"));
    }

    /** Reads column i as the Java type that suits its SQL type best. */
    static Object readColumn(ResultSet rs, int i, String sqlType) throws SQLException {
        switch (sqlType) {
            case "date": return rs.getObject(i, LocalDate.class);
            case "timestamp": return rs.getObject(i, LocalDateTime.class);
            case "timestamptz": return rs.getObject(i, OffsetDateTime.class);
            default: return rs.getObject(i);
        }
    }

    static void printTypeRows(String step, String label, ResultSet rs) throws SQLException {
        while (rs.next()) {
            int id = rs.getInt(1);
            for (int i = 0; i < TYPE_COLUMNS.length; i++) {
                Object value = readColumn(rs, i + 2, (String) TYPE_COLUMNS[i][1]);
                out(step, label + " id=" + id + " " + TYPE_COLUMNS[i][0] + "=" + fmt(value));
            }
        }
    }

    static void stepTypes(Connection conn) throws Exception {
        String step = "types";
        try (Statement st = conn.createStatement()) {
            st.execute("SET TimeZone TO 'UTC'");
            out(step, "TimeZone " + conn.unwrap(PGConnection.class).getParameterStatus("TimeZone"));
            List<String> ddl = new ArrayList<>();
            for (Object[] c : TYPE_COLUMNS) {
                ddl.add(c[0] + " " + c[1]);
            }
            st.execute("CREATE TEMP TABLE veil_types (id int PRIMARY KEY, " + String.join(", ", ddl) + ")");
        }

        List<String> names = new ArrayList<>();
        for (Object[] c : TYPE_COLUMNS) {
            names.add((String) c[0]);
        }
        String insert = "INSERT INTO veil_types (id, " + String.join(", ", names) + ") VALUES (?"
                + ", ?".repeat(TYPE_COLUMNS.length) + ")";
        try (PreparedStatement ps = conn.prepareStatement(insert)) {
            for (int id = 1; id <= 3; id++) {
                bindRow(conn, ps, id, id == 3);
                out(step, "insert id=" + id + " rowcount=" + ps.executeUpdate());
            }
        }

        String select = "SELECT id, " + String.join(", ", names) + " FROM veil_types ORDER BY id";
        // A plain Statement uses an unnamed statement and text results.
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(select)) {
            ResultSetMetaData md = rs.getMetaData();
            List<String> columns = new ArrayList<>();
            for (int i = 1; i <= md.getColumnCount(); i++) {
                columns.add(md.getColumnName(i) + ":" + md.getColumnTypeName(i));
            }
            out(step, "columns " + String.join(" ", columns));
            printTypeRows(step, "statement", rs);
        }
        // A PreparedStatement executed twice: once it is a named statement,
        // pgjdbc asks for many types in the binary result format.
        try (PreparedStatement ps = conn.prepareStatement(select)) {
            for (int round = 1; round <= 2; round++) {
                try (ResultSet rs = ps.executeQuery()) {
                    printTypeRows(step, "prepared" + round, rs);
                }
            }
        }

        // The server's own text rendering of every column, as a stable reference.
        List<String> casts = new ArrayList<>();
        for (String name : names) {
            casts.add(name + "::text");
        }
        try (Statement st = conn.createStatement();
             ResultSet rs = st.executeQuery("SELECT id, " + String.join(", ", casts)
                     + " FROM veil_types ORDER BY id")) {
            while (rs.next()) {
                for (int i = 0; i < TYPE_COLUMNS.length; i++) {
                    out(step, "server id=" + rs.getInt(1) + " " + names.get(i) + "=" + fmt(rs.getString(i + 2)));
                }
            }
        }
    }

    // -----------------------------------------------------------------------
    // Step 2: a server-side prepared statement executed several times.
    // -----------------------------------------------------------------------

    static void stepPrepared(Connection conn) throws Exception {
        String step = "prepared";
        String sql = "SELECT ?::int * 2 AS doubled, upper(?::text) AS up, "
                + "?::int + length(?::text) AS total /* veil-prep */";
        int[] numbers = {1, -7, 0, 2147483, 42};
        String[] texts = {"a", "Zoë", "", "hello world", "x".repeat(100)};
        // With prepareThreshold=1 the statement is parsed once under a name
        // on the server and only bound and executed afterwards.
        try (PreparedStatement ps = conn.prepareStatement(sql)) {
            for (int k = 0; k < numbers.length; k++) {
                ps.setInt(1, numbers[k]);
                ps.setString(2, texts[k]);
                ps.setInt(3, numbers[k]);
                ps.setString(4, texts[k]);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    out(step, "params=" + fmt(new Object[] {numbers[k], texts[k]})
                            + " result=" + fmt(new Object[] {rs.getObject(1), rs.getObject(2), rs.getObject(3)}));
                }
            }
            // Count the prepared statements that carry our marker. The marker
            // is assembled at run time so that this query does not match itself.
            try (Statement st = conn.createStatement();
                 ResultSet rs = st.executeQuery("SELECT count(*) FROM pg_prepared_statements "
                         + "WHERE statement LIKE '%' || 'veil' || '-prep' || '%'")) {
                rs.next();
                out(step, "server-side statements=" + rs.getLong(1));
            }
        }
    }

    // -----------------------------------------------------------------------
    // Step 3: commit, rollback and savepoints.
    // -----------------------------------------------------------------------

    static long count(Connection conn, String sql) throws SQLException {
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            rs.next();
            return rs.getLong(1);
        }
    }

    static List<Integer> ids(Connection conn) throws SQLException {
        List<Integer> ids = new ArrayList<>();
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("SELECT id FROM veil_tx ORDER BY id")) {
            while (rs.next()) {
                ids.add(rs.getInt(1));
            }
        }
        return ids;
    }

    static void exec(Connection conn, String sql) throws SQLException {
        try (Statement st = conn.createStatement()) {
            st.execute(sql);
        }
    }

    static void stepTx(Connection conn) throws Exception {
        String step = "tx";
        exec(conn, "CREATE TEMP TABLE veil_tx (id int)");
        String countSql = "SELECT count(*) FROM veil_tx";

        // With auto-commit off, pgjdbc sends BEGIN along with the next statement.
        conn.setAutoCommit(false);
        exec(conn, "INSERT INTO veil_tx VALUES (1)");
        out(step, "after insert status=" + status(conn));
        conn.rollback();
        out(step, "after rollback status=" + status(conn) + " count=" + count(conn, countSql));
        conn.commit(); // Ends the transaction that the count query opened.

        exec(conn, "INSERT INTO veil_tx VALUES (2)");
        conn.commit();
        out(step, "after commit status=" + status(conn) + " count=" + count(conn, countSql));
        conn.commit();

        exec(conn, "INSERT INTO veil_tx VALUES (3)");
        Savepoint sp = conn.setSavepoint("sp1");
        exec(conn, "INSERT INTO veil_tx VALUES (4)");
        conn.rollback(sp);
        exec(conn, "INSERT INTO veil_tx VALUES (5)");
        conn.commit();
        conn.setAutoCommit(true);
        out(step, "after savepoint rollback status=" + status(conn) + " ids=" + fmt(ids(conn).toArray()));
    }

    // -----------------------------------------------------------------------
    // Step 4: server errors and recovery from them.
    // -----------------------------------------------------------------------

    /** Runs a statement that must fail and prints its SQLSTATE and message. */
    static void expectError(Connection conn, String step, String label, String sql, Integer param)
            throws SQLException {
        try (PreparedStatement ps = conn.prepareStatement(sql)) {
            if (param != null) {
                ps.setInt(1, param);
            }
            ps.execute();
        } catch (PSQLException e) {
            ServerErrorMessage m = e.getServerErrorMessage();
            if (m == null) {
                throw e;
            }
            out(step, label + " sqlstate=" + e.getSQLState() + " severity=" + m.getSeverity()
                    + " message=" + fmt(m.getMessage()));
            if (m.getConstraint() != null) {
                out(step, label + " constraint=" + m.getConstraint());
            }
            return;
        }
        throw new AssertionError(label + ": statement did not fail: " + sql);
    }

    static void checkAlive(Connection conn, String step, String label) throws SQLException {
        out(step, label + " connection alive select1=" + count(conn, "SELECT 1") + " status=" + status(conn));
    }

    static void stepErrors(Connection conn) throws Exception {
        String step = "errors";
        expectError(conn, step, "division", "SELECT 1/0", null);
        checkAlive(conn, step, "division");
        expectError(conn, step, "syntax", "SELEC 1", null);
        checkAlive(conn, step, "syntax");
        exec(conn, "CREATE TEMP TABLE veil_unique (id int CONSTRAINT veil_unique_pk PRIMARY KEY)");
        exec(conn, "INSERT INTO veil_unique VALUES (1)");
        expectError(conn, step, "unique", "INSERT INTO veil_unique VALUES (?)", 1);
        checkAlive(conn, step, "unique");

        // An error inside a transaction block aborts it; every later statement
        // fails with 25P02 until the block is rolled back.
        conn.setAutoCommit(false);
        expectError(conn, step, "in-tx", "SELECT 1/0", null);
        out(step, "in-tx status=" + status(conn));
        expectError(conn, step, "aborted", "SELECT 1", null);
        conn.rollback();
        conn.setAutoCommit(true);
        checkAlive(conn, step, "after-rollback");
    }

    // -----------------------------------------------------------------------
    // Step 5: COPY in and out in the text, CSV and binary formats.
    // -----------------------------------------------------------------------

    /** Deterministic values for COPY row i, including awkward characters; null is SQL NULL. */
    static String[] copyRowValues(int i) {
        String name = "name " + i;
        if (i % 7 == 0) name += "\twith tab";
        if (i % 11 == 0) name += "\nwith newline";
        if (i % 13 == 0) name += " \"quoted\", comma";
        if (i % 17 == 0) name += " back\\slash";
        if (i % 19 == 0) name += " Zoë ✓";
        String amount = ((i * 37) % 100000 - 50000) + "." + String.format("%02d", i % 100);
        String flag = i % 2 == 0 ? "t" : "f";
        String note = i % 5 == 0 ? null : (i % 5 == 1 ? "" : "note-" + (i * i));
        return new String[] {String.valueOf(i), name, amount, flag, note};
    }

    static String textEscape(String field) {
        if (field == null) {
            return "\\N";
        }
        return field.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r");
    }

    /** In CSV an unquoted empty field is NULL and a quoted empty string is ''. */
    static String csvEscape(String field) {
        if (field == null) {
            return "";
        }
        if (field.isEmpty() || field.matches("(?s).*[,\"\n\r].*")) {
            return "\"" + field.replace("\"", "\"\"") + "\"";
        }
        return field;
    }

    /** Sends data with COPY FROM STDIN in chunks that ignore row boundaries. */
    static long copyIn(CopyManager cm, String sql, byte[] data, int chunk) throws SQLException {
        CopyIn in = cm.copyIn(sql);
        for (int start = 0; start < data.length; start += chunk) {
            in.writeToCopy(data, start, Math.min(chunk, data.length - start));
        }
        return in.endCopy();
    }

    static final class CopyResult {
        byte[] data;
        long rows;
    }

    static CopyResult copyOut(CopyManager cm, String sql) throws SQLException {
        CopyOut copy = cm.copyOut(sql);
        ByteArrayOutputStream buffer = new ByteArrayOutputStream();
        byte[] chunk;
        while ((chunk = copy.readFromCopy()) != null) {
            buffer.write(chunk, 0, chunk.length);
        }
        CopyResult result = new CopyResult();
        result.data = buffer.toByteArray();
        result.rows = copy.getHandledRowCount();
        return result;
    }

    static void stepCopy(Connection conn) throws Exception {
        String step = "copy";
        exec(conn, "CREATE TEMP TABLE veil_copy (id int PRIMARY KEY, name text, "
                + "amount numeric(12,2), flag bool, note text)");
        StringBuilder text = new StringBuilder();
        for (int i = 1; i <= 1000; i++) {
            List<String> fields = new ArrayList<>();
            for (String f : copyRowValues(i)) {
                fields.add(textEscape(f));
            }
            text.append(String.join("\t", fields)).append('\n');
        }
        StringBuilder csv = new StringBuilder();
        for (int i = 1001; i <= 2000; i++) {
            List<String> fields = new ArrayList<>();
            for (String f : copyRowValues(i)) {
                fields.add(csvEscape(f));
            }
            csv.append(String.join(",", fields)).append('\n');
        }
        byte[] textData = text.toString().getBytes(StandardCharsets.UTF_8);
        byte[] csvData = csv.toString().getBytes(StandardCharsets.UTF_8);

        CopyManager cm = conn.unwrap(PGConnection.class).getCopyAPI();
        out(step, "in text rows=" + copyIn(cm, "COPY veil_copy FROM STDIN", textData, 4093));
        out(step, "in csv rows=" + copyIn(cm, "COPY veil_copy FROM STDIN WITH (FORMAT csv)", csvData, 8191));

        try (Statement st = conn.createStatement();
             ResultSet rs = st.executeQuery(
                     "SELECT count(*), sum(id), count(note), sum(length(name)) FROM veil_copy")) {
            rs.next();
            out(step, "table summary=" + fmt(new Object[] {rs.getObject(1), rs.getObject(2),
                    rs.getObject(3), rs.getObject(4)}));
        }

        String[][] formats = {
            {"text", ""},
            {"csv", " WITH (FORMAT csv, HEADER)"},
            {"binary", " WITH (FORMAT binary)"},
        };
        for (String[] format : formats) {
            CopyResult r = copyOut(cm, "COPY (SELECT * FROM veil_copy ORDER BY id) TO STDOUT" + format[1]);
            out(step, "out " + format[0] + " rows=" + r.rows + " bytes=" + r.data.length
                    + " sha256=" + sha256Hex(r.data));
        }

        // The text output must be exactly what we sent in for the first 1000 rows.
        CopyResult r = copyOut(cm, "COPY (SELECT * FROM veil_copy WHERE id <= 1000 ORDER BY id) TO STDOUT");
        out(step, "text round trip identical=" + Arrays.equals(r.data, textData));
    }

    // -----------------------------------------------------------------------
    // Step 6: LISTEN / NOTIFY between two connections.
    // -----------------------------------------------------------------------

    static void stepNotify(Connection conn) throws Exception {
        String step = "notify";
        // The channel name carries this run's token so that concurrent runs
        // against the same server cannot see each other's notifications. The
        // token is replaced by a placeholder in the transcript.
        String channel = "veil_channel_" + RUN_TOKEN;
        exec(conn, "LISTEN " + channel);
        int senderPid;
        try (Connection sender = connect()) {
            senderPid = (int) count(sender, "SELECT pg_backend_pid()");
            exec(sender, "NOTIFY " + channel + ", 'payload-1'");
            try (PreparedStatement ps = sender.prepareStatement("SELECT pg_notify(?, ?)")) {
                ps.setString(1, channel);
                ps.setString(2, "payload-2 Zoë ✓");
                ps.execute();
            }
        }

        // getNotifications(timeout) waits on the socket for notifications
        // that arrive while the connection is idle.
        PGConnection pg = conn.unwrap(PGConnection.class);
        List<PGNotification> received = new ArrayList<>();
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(NOTIFY_TIMEOUT_MILLIS);
        while (received.size() < 2) {
            long remaining = TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime());
            if (remaining <= 0) {
                break;
            }
            PGNotification[] batch = pg.getNotifications((int) remaining);
            if (batch != null) {
                received.addAll(Arrays.asList(batch));
            }
        }
        out(step, "received count=" + received.size());
        for (PGNotification n : received) {
            // The pid is compared, never printed, so the transcript stays stable.
            out(step, "channel=" + n.getName().replace(RUN_TOKEN, "<token>") + " payload=" + fmt(n.getParameter())
                    + " sender pid matches=" + (n.getPID() == senderPid));
        }
        exec(conn, "UNLISTEN *");
    }

    // -----------------------------------------------------------------------
    // Step 7: cancelling a running query with Statement.cancel().
    // -----------------------------------------------------------------------

    /**
     * Waits (at most a few seconds) until a query containing marker is running.
     *
     * PostgreSQL ignores a cancel request that arrives while the backend is
     * still idle, waiting for the next command, so on a loaded machine a blind
     * delay could cancel nothing. The monitor connection looks the query up in
     * pg_stat_activity; if it never shows up (say, because a proxy changed the
     * query text) we cancel anyway once the wait is over.
     */
    static void waitUntilActive(Connection monitor, String marker) throws Exception {
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(ACTIVE_WAIT_MILLIS);
        try (PreparedStatement ps = monitor.prepareStatement(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                + "AND pid <> pg_backend_pid() AND position(? in query) > 0")) {
            ps.setString(1, marker);
            while (System.nanoTime() < deadline) {
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    if (rs.getLong(1) > 0) {
                        return;
                    }
                }
                Thread.sleep(50);
            }
        }
    }

    static void stepCancel(Connection conn) throws Exception {
        String step = "cancel";
        String marker = "veil-cancel-" + RUN_TOKEN;
        ScheduledExecutorService scheduler = Executors.newSingleThreadScheduledExecutor();
        try (Connection monitor = connect(); Statement st = conn.createStatement()) {
            // Statement.cancel() sends a CancelRequest on a new connection, using
            // the key that the server sent in BackendKeyData.
            ScheduledFuture<?> cancel = scheduler.schedule(() -> {
                waitUntilActive(monitor, marker);
                st.cancel();
                return null;
            }, 500, TimeUnit.MILLISECONDS);
            long started = System.nanoTime();
            try {
                st.executeQuery("SELECT pg_sleep(30) /* " + marker + " */");
                throw new AssertionError("pg_sleep(30) was not cancelled");
            } catch (PSQLException e) {
                if (!"57014".equals(e.getSQLState())) {
                    throw e;
                }
                long elapsed = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - started);
                out(step, "sqlstate=" + e.getSQLState() + " message="
                        + fmt(e.getServerErrorMessage().getMessage()));
                out(step, elapsed < CANCEL_LIMIT_MILLIS ? "cancel ok" : "cancel too slow");
            }
            cancel.get(); // Surfaces any failure of the cancel call itself.
        } finally {
            scheduler.shutdownNow();
        }
        checkAlive(conn, step, "after-cancel");
    }

    // -----------------------------------------------------------------------
    // Step 8: a large result set, streamed with a fetch size.
    // -----------------------------------------------------------------------

    static void stepBigresult(Connection conn) throws Exception {
        String step = "bigresult";
        // pgjdbc only honours the fetch size inside a transaction: it then
        // executes the portal in batches (Execute with a row limit).
        conn.setAutoCommit(false);
        long rows = 0;
        long sum = 0;
        MessageDigest digest = MessageDigest.getInstance("SHA-256");
        try (Statement st = conn.createStatement()) {
            st.setFetchSize(20000);
            try (ResultSet rs = st.executeQuery("SELECT g, md5(g::text) FROM generate_series(1, 1000000) g")) {
                while (rs.next()) {
                    rows++;
                    sum += rs.getLong(1);
                    digest.update(rs.getString(2).getBytes(StandardCharsets.US_ASCII));
                }
            }
        }
        conn.commit();
        conn.setAutoCommit(true);
        out(step, "rows=" + rows + " sum=" + sum + " sha256(md5s)=" + HexFormat.of().formatHex(digest.digest()));
    }

    // -----------------------------------------------------------------------
    // Step 9: 64 MiB values in both directions.
    // -----------------------------------------------------------------------

    static void stepBigvalue(Connection conn) throws Exception {
        String step = "bigvalue";
        int size = 64 * 1024 * 1024;
        try (PreparedStatement ps = conn.prepareStatement("SELECT repeat('x', ?)")) {
            ps.setInt(1, size);
            try (ResultSet rs = ps.executeQuery()) {
                rs.next();
                String value = rs.getString(1);
                out(step, "result length=" + value.length() + " sha256="
                        + sha256Hex(value.getBytes(StandardCharsets.US_ASCII)));
            }
        }

        // A 64 MiB parameter built from a repeating, non-trivial pattern. It is
        // referenced once in the query so that it is sent only once. Every
        // character of the pattern is in the basic plane, so String.length()
        // equals the character count that the server reports.
        String pattern = "pgveil-0123456789-abcdefghijklmnopqrstuvwxyz-Zoë✓\n";
        String param = pattern.repeat(size / pattern.length() + 1).substring(0, size);
        try (PreparedStatement ps = conn.prepareStatement(
                "SELECT length(v), md5(v) FROM (SELECT ?::text AS v) AS s")) {
            ps.setString(1, param);
            try (ResultSet rs = ps.executeQuery()) {
                rs.next();
                String md5 = rs.getString(2);
                String localMd5 = HexFormat.of().formatHex(
                        MessageDigest.getInstance("MD5").digest(param.getBytes(StandardCharsets.UTF_8)));
                out(step, "param chars=" + param.length() + " length=" + rs.getInt(1) + " md5=" + md5
                        + " matches local=" + md5.equals(localMd5));
            }
        }
    }
}
