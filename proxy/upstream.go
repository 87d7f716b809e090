package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// SSL modes accepted in the upstream URL, with libpq's meaning
// (PostgreSQL documentation §34.19, "SSL Support", table 34.1).
const (
	SSLDisable    = "disable"
	SSLAllow      = "allow"
	SSLPrefer     = "prefer"
	SSLRequire    = "require"
	SSLVerifyCA   = "verify-ca"
	SSLVerifyFull = "verify-full"
)

// sslRequestCode is the SSLRequest code (PostgreSQL documentation §55.7,
// "Message Formats", SSLRequest: 1234 in the high 16 bits, 5679 in the low).
const sslRequestCode = 80877103

// Upstream says where client sessions go and how the proxy talks TLS to the
// server. Build it with ParseUpstream.
type Upstream struct {
	// Network is "tcp" or "unix".
	Network string
	// Address is host:port for tcp, or the socket file path for unix.
	Address string
	// Host is the host name used for verify-full.
	Host string
	// SSLMode is one of the SSL* constants; ParseUpstream defaults it to prefer.
	SSLMode string
	// TLS is the client TLS configuration used towards the server when the
	// mode asks for TLS; ParseUpstream builds it from sslrootcert.
	TLS *tls.Config
	// User, Password and Database are the proxy's own account (used later
	// for catalog reads); client sessions always authenticate as themselves.
	User, Password, Database string
	// Dial, when set, replaces net.Dialer (tests, custom transports).
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
}

// ParseUpstream parses a postgres:// URL: host (or a unix socket directory
// as host=/path), port (default 5432), sslmode (default prefer) and
// sslrootcert ("system" uses the system roots).
func ParseUpstream(raw string) (Upstream, error) {
	var u Upstream
	pu, err := url.Parse(raw)
	if err != nil {
		return u, fmt.Errorf("upstream URL: %w", err)
	}
	if pu.Scheme != "postgres" && pu.Scheme != "postgresql" {
		return u, fmt.Errorf("upstream URL: scheme must be postgres://, got %q", pu.Scheme)
	}
	q := pu.Query()
	host := pu.Hostname()
	if h := q.Get("host"); h != "" {
		host = h
	}
	if host == "" {
		host = "localhost"
	}
	port := pu.Port()
	if p := q.Get("port"); p != "" {
		port = p
	}
	if port == "" {
		port = "5432"
	}
	if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
		return u, fmt.Errorf("upstream URL: bad port %q", port)
	}
	u.Host = host
	if strings.HasPrefix(host, "/") {
		u.Network = "unix"
		u.Address = host + "/.s.PGSQL." + port
	} else {
		u.Network = "tcp"
		u.Address = net.JoinHostPort(host, port)
	}
	if pu.User != nil {
		u.User = pu.User.Username()
		u.Password, _ = pu.User.Password()
	}
	u.Database = strings.TrimPrefix(pu.Path, "/")

	u.SSLMode = q.Get("sslmode")
	if u.SSLMode == "" {
		u.SSLMode = SSLPrefer
	}
	rootCert := q.Get("sslrootcert")
	switch u.SSLMode {
	case SSLDisable, SSLAllow, SSLPrefer:
	case SSLRequire:
		// libpq: require with a root certificate file behaves like verify-ca.
		if rootCert != "" {
			u.SSLMode = SSLVerifyCA
		}
	case SSLVerifyCA, SSLVerifyFull:
	default:
		return u, fmt.Errorf("upstream URL: unknown sslmode %q", u.SSLMode)
	}
	if u.Network == "unix" && u.SSLMode != SSLDisable && u.SSLMode != SSLAllow && u.SSLMode != SSLPrefer {
		return u, fmt.Errorf("upstream URL: sslmode=%s is impossible over a unix socket", u.SSLMode)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host}
	switch u.SSLMode {
	case SSLVerifyCA, SSLVerifyFull:
		var pool *x509.CertPool
		if rootCert == "" || rootCert == "system" {
			if pool, err = x509.SystemCertPool(); err != nil {
				return u, fmt.Errorf("upstream URL: system roots: %w", err)
			}
		} else {
			pem, err := os.ReadFile(rootCert)
			if err != nil {
				return u, fmt.Errorf("upstream URL: sslrootcert: %w", err)
			}
			pool = x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return u, fmt.Errorf("upstream URL: sslrootcert %s: no PEM certificates", rootCert)
			}
		}
		cfg.RootCAs = pool
		if u.SSLMode == SSLVerifyCA {
			// verify-ca checks the chain but not the host name.
			cfg.InsecureSkipVerify = true
			cfg.VerifyConnection = func(cs tls.ConnectionState) error {
				return verifyChain(cs, pool)
			}
		}
	default:
		// prefer and require encrypt without authenticating the server, as libpq does.
		cfg.InsecureSkipVerify = true
	}
	u.TLS = cfg
	return u, nil
}

func verifyChain(cs tls.ConnectionState, pool *x509.CertPool) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("server sent no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter})
	return err
}

// wantsTLS reports whether the mode sends an SSLRequest.
func (u *Upstream) wantsTLS() bool {
	return u.SSLMode != SSLDisable && u.SSLMode != SSLAllow
}

// dial connects to the server and negotiates TLS per the SSL mode. It
// reports whether the connection is encrypted.
func (u *Upstream) dial(ctx context.Context, timeout time.Duration) (net.Conn, bool, error) {
	dial := u.Dial
	if dial == nil {
		d := net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
		dial = d.DialContext
	}
	conn, err := dial(ctx, u.Network, u.Address)
	if err != nil {
		return nil, false, err
	}
	if !u.wantsTLS() {
		return conn, false, nil
	}
	deadline := time.Now().Add(timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = conn.SetDeadline(deadline)
	var req [8]byte
	binary.BigEndian.PutUint32(req[0:4], 8)
	binary.BigEndian.PutUint32(req[4:8], sslRequestCode)
	if _, err := conn.Write(req[:]); err != nil {
		conn.Close()
		return nil, false, fmt.Errorf("SSLRequest: %w", err)
	}
	var resp [1]byte
	if _, err := io.ReadFull(conn, resp[:]); err != nil {
		conn.Close()
		return nil, false, fmt.Errorf("SSLRequest: %w", err)
	}
	switch resp[0] {
	case 'S':
		tc := tls.Client(conn, u.TLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, false, fmt.Errorf("TLS handshake with server (sslmode=%s): %w", u.SSLMode, err)
		}
		_ = conn.SetDeadline(time.Time{})
		return tc, true, nil
	case 'N':
		if u.SSLMode == SSLPrefer {
			_ = conn.SetDeadline(time.Time{})
			return conn, false, nil
		}
		conn.Close()
		return nil, false, fmt.Errorf("server does not support SSL, but sslmode=%s requires it", u.SSLMode)
	default:
		conn.Close()
		return nil, false, fmt.Errorf("SSLRequest: unexpected response byte %q", resp[0])
	}
}
