// Package testcert owns certificates for tests: a throwaway certificate
// authority and the leaf certificates it issues for servers and clients.
//
// Every key is ECDSA P-256 and every certificate is valid from one hour ago
// until 24 hours from now, which is enough for any test run and avoids
// clock-skew trouble. Private keys are PEM-encoded PKCS#8 ("PRIVATE KEY"),
// which both crypto/tls and the OpenSSL used by PostgreSQL accept.
package testcert

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// validBefore is how long before creation a certificate becomes valid.
const validBefore = time.Hour

// validFor is how long after creation a certificate stays valid.
const validFor = 24 * time.Hour

// CA is a throwaway certificate authority that issues leaf certificates.
type CA struct {
	// Cert is the parsed self-signed CA certificate.
	Cert *x509.Certificate
	// Key is the CA's private key.
	Key crypto.Signer
	// CertPEM is Cert in PEM form, e.g. for PostgreSQL's ssl_ca_file or
	// libpq's sslrootcert.
	CertPEM []byte
}

// NewCA creates a self-signed ECDSA P-256 certificate authority named
// commonName, valid from one hour ago until 24 hours from now.
func NewCA(commonName string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("testcert: generate CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"pgveil testcert"}},
		NotBefore:             now.Add(-validBefore),
		NotAfter:              now.Add(validFor),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("testcert: create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("testcert: parse CA certificate: %w", err)
	}
	return &CA{
		Cert:    cert,
		Key:     key,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
	}, nil
}

// Issue creates a leaf certificate and its private key signed by the CA.
// The certificate is usable for both TLS server and client authentication.
// Each host is added as a subject alternative name: an IP address if it
// parses as one, a DNS name otherwise. A server that clients verify by IP
// (e.g. "127.0.0.1" with sslmode=verify-full) must list that IP in hosts;
// for a client certificate used with PostgreSQL "cert" authentication,
// commonName is the database user name. Issue returns the certificate and
// the PKCS#8 private key, both PEM-encoded.
func (ca *CA) Issue(commonName string, hosts ...string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("testcert: generate key for %q: %w", commonName, err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-validBefore),
		NotAfter:              now.Add(validFor),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("testcert: create certificate for %q: %w", commonName, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("testcert: marshal key for %q: %w", commonName, err)
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	return certPEM, keyPEM, nil
}

// Pool returns a new certificate pool holding only the CA certificate, for
// tls.Config.RootCAs or tls.Config.ClientCAs.
func (ca *CA) Pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return pool
}

// WriteFiles writes each file into dir with mode 0600, creating dir and any
// subdirectories named in the file names with mode 0700. Names must be
// local paths (no absolute paths, no ".."). An existing file is overwritten
// and its mode reset to 0600, as libpq and PostgreSQL insist on for keys.
func WriteFiles(dir string, files map[string][]byte) error {
	for name, data := range files {
		if !filepath.IsLocal(name) {
			return fmt.Errorf("testcert: write %q: not a local file name", name)
		}
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return fmt.Errorf("testcert: write %s: %w", path, err)
		}
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return fmt.Errorf("testcert: write %s: %w", path, err)
		}
		if err := os.Chmod(path, 0o600); err != nil {
			return fmt.Errorf("testcert: write %s: %w", path, err)
		}
	}
	return nil
}

// newSerial returns a random positive 128-bit certificate serial number.
func newSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("testcert: generate serial number: %w", err)
	}
	return serial.Add(serial, big.NewInt(1)), nil
}
