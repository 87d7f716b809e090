// Package integration holds pgveil's end-to-end tests: a private PostgreSQL
// 15 with TLS and users for trust, password, md5 and scram-sha-256
// authentication, the proxy in-process and as the built binary, and real
// clients (psql, pgx, lib/pq, psycopg, JDBC, node-postgres) whose results
// through the proxy must equal their results direct.
package integration
