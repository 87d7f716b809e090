import java.sql.*;
import java.util.*;

/**
 * Masked reads a masked table through pgveil with pgjdbc and walks
 * DatabaseMetaData the way IDEs and ORMs do. It prints a transcript; the
 * integration test checks it. Connection settings come from PGHOST, PGPORT,
 * PGUSER and PGDATABASE.
 */
public class Masked {
    public static void main(String[] args) throws Exception {
        TimeZone.setDefault(TimeZone.getTimeZone("UTC"));
        String url = "jdbc:postgresql://" + System.getenv("PGHOST") + ":" + System.getenv("PGPORT") + "/"
            + System.getenv("PGDATABASE") + "?sslmode=disable&prepareThreshold=1";
        try (Connection c = DriverManager.getConnection(url, System.getenv("PGUSER"), "")) {
            // Plain statement (simple-ish), then a prepared statement run
            // twice so the driver switches to a server-side statement with
            // binary results.
            try (Statement st = c.createStatement();
                 ResultSet rs = st.executeQuery("SELECT email, ssn, birth_date, salary FROM customers ORDER BY id")) {
                while (rs.next()) {
                    System.out.println("plain: " + rs.getString(1) + " " + rs.getString(2) + " " + rs.getDate(3) + " " + rs.getBigDecimal(4));
                }
            }
            try (PreparedStatement ps = c.prepareStatement("SELECT email, ssn, birth_date, salary FROM customers WHERE id = ?")) {
                for (int i = 0; i < 2; i++) {
                    ps.setInt(1, 1);
                    try (ResultSet rs = ps.executeQuery()) {
                        while (rs.next()) {
                            System.out.println("prepared: " + rs.getString(1) + " " + rs.getString(2) + " " + rs.getDate(3) + " " + rs.getBigDecimal(4));
                        }
                    }
                }
            }
            DatabaseMetaData md = c.getMetaData();
            try (ResultSet rs = md.getTables(null, "public", "%", new String[] {"TABLE"})) {
                List<String> names = new ArrayList<>();
                while (rs.next()) names.add(rs.getString("TABLE_NAME"));
                Collections.sort(names);
                System.out.println("tables: " + names);
            }
            try (ResultSet rs = md.getColumns(null, "public", "customers", "%")) {
                List<String> cols = new ArrayList<>();
                while (rs.next()) cols.add(rs.getString("COLUMN_NAME") + ":" + rs.getString("TYPE_NAME"));
                System.out.println("columns: " + cols);
            }
            try (ResultSet rs = md.getPrimaryKeys(null, "public", "customers")) {
                while (rs.next()) System.out.println("pk: " + rs.getString("COLUMN_NAME"));
            }
            try (ResultSet rs = md.getImportedKeys(null, "public", "orders")) {
                while (rs.next()) System.out.println("fk: " + rs.getString("FKCOLUMN_NAME") + " -> " + rs.getString("PKTABLE_NAME"));
            }
            try (ResultSet rs = md.getIndexInfo(null, "public", "customers", false, false)) {
                while (rs.next()) System.out.println("index: " + rs.getString("INDEX_NAME"));
            }
            try (ResultSet rs = md.getSchemas()) {
                List<String> s = new ArrayList<>();
                while (rs.next()) s.add(rs.getString(1));
                System.out.println("schemas include public: " + s.contains("public"));
            }
            System.out.println("product: " + md.getDatabaseProductName());
            System.out.println("done: ok");
        }
    }
}
