package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/pgveil/pgveil/admin"
	"github.com/pgveil/pgveil/rules"
	"github.com/pgveil/pgveil/vaultkms"
)

// keyFlags select the key service for encrypted columns: the local
// keyring, or Vault (transit, with the token from VAULT_TOKEN or AppRole).
type keyFlags struct {
	keyring        string
	vaultAddr      string
	vaultMount     string
	vaultCACert    string
	vaultRoleID    string
	vaultSecretID  string
	vaultTimeout   time.Duration
	vaultTLSServer string
}

func (k *keyFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&k.keyring, "keyring", "", "local key file made by 'pgveil keyring init' (mode 0600): the embedded key service for encrypted columns")
	fs.StringVar(&k.vaultAddr, "vault-addr", "", "HashiCorp Vault address for encrypted columns (default $VAULT_ADDR); the token comes from $VAULT_TOKEN or AppRole")
	fs.StringVar(&k.vaultMount, "vault-transit-mount", "transit", "mount path of Vault's transit engine")
	fs.StringVar(&k.vaultCACert, "vault-ca-cert", "", "PEM CA certificates to verify Vault's TLS certificate (default: the system roots)")
	fs.StringVar(&k.vaultTLSServer, "vault-tls-server-name", "", "name to check in Vault's TLS certificate (default: the host of --vault-addr)")
	fs.StringVar(&k.vaultRoleID, "vault-approle-role-id-file", "", "file holding the AppRole role_id (with --vault-approle-secret-id-file, instead of VAULT_TOKEN)")
	fs.StringVar(&k.vaultSecretID, "vault-approle-secret-id-file", "", "file holding the AppRole secret_id")
	fs.DurationVar(&k.vaultTimeout, "vault-timeout", 5*time.Second, "timeout of one request to Vault (retried with backoff on transport errors and 5xx)")
}

// configured reports whether a key service was asked for.
func (k *keyFlags) configured() bool {
	return k.keyring != "" || k.vaultAddr != "" || os.Getenv("VAULT_ADDR") != ""
}

// open starts the key service the flags select; observe (may be nil)
// receives its events.
func (k *keyFlags) open(ctx context.Context, observe vaultkms.Observer) (vaultkms.Service, error) {
	addr := k.vaultAddr
	if addr == "" {
		addr = os.Getenv("VAULT_ADDR")
	}
	switch {
	case k.keyring != "" && addr != "":
		return nil, usagef("--keyring and --vault-addr (or VAULT_ADDR) are exclusive: choose one key service")
	case k.keyring != "":
		kr, err := vaultkms.NewKeyring(vaultkms.KeyringConfig{Path: k.keyring, Observer: observe})
		if err != nil {
			return nil, usagef("--keyring: %v", err)
		}
		return kr, nil
	case addr != "":
		cfg := vaultkms.VaultConfig{Addr: addr, TransitMount: k.vaultMount, Timeout: k.vaultTimeout, Observer: observe,
			TLS: vaultkms.VaultTLS{CAFile: k.vaultCACert, ServerName: k.vaultTLSServer}}
		switch {
		case k.vaultRoleID != "" || k.vaultSecretID != "":
			if k.vaultRoleID == "" || k.vaultSecretID == "" {
				return nil, usagef("--vault-approle-role-id-file and --vault-approle-secret-id-file go together")
			}
			cfg.AppRole = &vaultkms.AppRole{RoleIDFile: k.vaultRoleID, SecretIDFile: k.vaultSecretID}
		default:
			cfg.Token = os.Getenv("VAULT_TOKEN")
			if cfg.Token == "" {
				return nil, usagef("Vault needs a token: set VAULT_TOKEN, or use --vault-approle-role-id-file and --vault-approle-secret-id-file")
			}
		}
		v, err := vaultkms.NewVault(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("vault: %w", err)
		}
		return v, nil
	}
	return nil, usagef("encrypted columns need a key service: --keyring FILE or --vault-addr URL")
}

// columnOf is the key service's view of an encrypted policy column.
func columnOf(r *rules.ColumnRule) vaultkms.Column {
	e := r.Encrypted
	return vaultkms.Column{ID: r.Key.Schema + "." + r.Key.Table + "." + r.Key.Column, Key: e.Key, Mode: vaultkms.Mode(e.Mode), Searchable: e.Searchable}
}

// checkKeys verifies that every key the policy names exists in svc and
// that every encrypted column's settings are valid.
func checkKeys(ctx context.Context, pol *rules.Policy, svc vaultkms.Service) []string {
	var problems []string
	seen := map[string]bool{}
	for _, r := range pol.Columns {
		if r.Encrypted == nil {
			continue
		}
		col := columnOf(r)
		if err := col.Validate(); err != nil {
			problems = append(problems, err.Error())
			continue
		}
		if seen[col.Key] {
			continue
		}
		seen[col.Key] = true
		info, err := svc.KeyInfo(ctx, col.Key)
		switch {
		case err != nil:
			problems = append(problems, fmt.Sprintf("key %q: %v", col.Key, err))
		case !info.Exists:
			problems = append(problems, fmt.Sprintf("key %q (column %s): no such key in the key service", col.Key, col.ID))
		case r.Encrypted.Searchable && r.Encrypted.Mode != "envelope" && !info.Convergent && info.Name != "" && isVault(svc):
			problems = append(problems, fmt.Sprintf("key %q (column %s): searchable columns need a convergent Vault key", col.Key, col.ID))
		}
	}
	return problems
}

func isVault(svc vaultkms.Service) bool {
	_, ok := svc.(*vaultkms.Vault)
	return ok
}

// vaultObserver feeds key-service events to the metrics.
func vaultObserver(m *admin.Metrics) vaultkms.Observer {
	return func(e vaultkms.Event) {
		m.KeyService(e.Op, e.Remote, e.Kind, e.Values, e.Duration)
	}
}

// keyAdapter is the proxy's view of a vaultkms service.
type keyAdapter struct{ svc vaultkms.Service }

func (k keyAdapter) Encrypt(ctx context.Context, col *rules.ColumnRule, plaintexts [][]byte) ([][]byte, error) {
	return k.svc.Encrypt(ctx, columnOf(col), plaintexts)
}

func (k keyAdapter) Decrypt(ctx context.Context, col *rules.ColumnRule, ciphertexts [][]byte) ([][]byte, error) {
	return k.svc.Decrypt(ctx, columnOf(col), ciphertexts)
}
