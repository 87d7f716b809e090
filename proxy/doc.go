// Package proxy owns pgveil's network side: the client listener, one session
// per client with its own upstream server connection, SSL/TLS on both sides,
// the authentication relay, relaying of every message flow of the PostgreSQL
// frontend/backend protocol version 3, cancel requests, and graceful shutdown.
//
// A session relays bytes between client and server through two pumps, one per
// direction. A pump frames the byte stream into protocol messages without
// copying: a message that needs no change is written on as it was read, in
// the same write as its neighbours, so relaying costs one read and one write
// per burst of messages and no allocation. Only the few messages the proxy
// must see whole (authentication requests, BackendKeyData, ReadyForQuery,
// ErrorResponse) are buffered entirely.
//
// Each pump runs in a goroutine of its own until the session is idle and
// known to pass unchanged; then, with Config.IOUring, both pumps move to
// one io_uring event loop shared by all such sessions (uring.go), which
// runs the same framing on its own thread, until anything ends the session.
package proxy
