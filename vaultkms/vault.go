package vaultkms

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"
)

// vaultSource prefixes Vault transit ciphertexts: "vault:vN:<base64>".
const vaultSource = "vault"

// maxResponseBytes caps a Vault response body; a batch of 1000 values of
// a few KiB each fits comfortably.
const maxResponseBytes = 64 << 20

// VaultConfig configures a Vault key service.
type VaultConfig struct {
	// Addr is Vault's address, e.g. "https://vault:8200"
	// (--vault-addr, VAULT_ADDR); required.
	Addr string
	// TransitMount is the mount path of the transit engine; "" means
	// "transit".
	TransitMount string
	// TLS configures HTTPS to Vault; the zero value uses the system roots.
	TLS VaultTLS
	// Token is a Vault token (VAULT_TOKEN). Exactly one of Token and
	// AppRole must be set. A renewable token is renewed in the background.
	Token string
	// AppRole logs in with AppRole and logs in again when the token's
	// lease ends or Vault starts refusing it.
	AppRole *AppRole
	// Timeout bounds one HTTP attempt; 0 means 5 seconds.
	Timeout time.Duration
	// MaxAttempts is how often a request is tried on transport errors,
	// 5xx and 429 (never on 4xx); 0 means 4.
	MaxAttempts int
	// BackoffMin and BackoffMax bound the exponential backoff between
	// attempts (with jitter); 0 means 100ms and 2s.
	BackoffMin, BackoffMax time.Duration
	// BatchSize is how many values go in one batch_input request; 0
	// means 1000.
	BatchSize int
	// Concurrency is how many batch requests of one call run at once; 0
	// means 4.
	Concurrency int
	// Envelope tunes envelope-mode columns; the zero value is usable.
	Envelope EnvelopeConfig
	// Observer, if not nil, receives an Event per operation and per
	// request to Vault.
	Observer Observer
}

// VaultTLS configures TLS to Vault. Empty fields use the defaults.
type VaultTLS struct {
	// CAFile is a PEM file of CA certificates to trust instead of the
	// system roots.
	CAFile string
	// CertFile and KeyFile are an optional client certificate.
	CertFile, KeyFile string
	// ServerName overrides the name checked in Vault's certificate.
	ServerName string
}

// AppRole is AppRole login material, read from files (so secrets stay out
// of process arguments and the environment).
type AppRole struct {
	// Mount is the AppRole auth mount; "" means "approle".
	Mount string
	// RoleIDFile and SecretIDFile hold the role_id and secret_id.
	RoleIDFile, SecretIDFile string
}

// Vault is the Vault transit key service. ModeTransit columns are
// encrypted by transit with derived keys (context = base64 of the column
// ID), convergent for searchable columns; ModeEnvelope columns use data
// keys from transit/datakey. It implements Service.
type Vault struct {
	cfg    VaultConfig
	client *api.Client
	env    *envelope

	flagsMu sync.Mutex
	flags   map[string]KeyInfo // immutable key settings, by key name

	authMu  sync.Mutex
	authGen uint64 // incremented on every login

	done chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// NewVault validates cfg, connects to Vault and authenticates (AppRole
// login, or a lookup of the token), and starts token renewal.
func NewVault(ctx context.Context, cfg VaultConfig) (*Vault, error) {
	if cfg.Addr == "" {
		return nil, fmt.Errorf("%w: missing Vault address (--vault-addr or VAULT_ADDR)", ErrConfig)
	}
	if (cfg.Token == "") == (cfg.AppRole == nil) {
		return nil, fmt.Errorf("%w: set exactly one of a Vault token (VAULT_TOKEN) and AppRole", ErrConfig)
	}
	if cfg.AppRole != nil && (cfg.AppRole.RoleIDFile == "" || cfg.AppRole.SecretIDFile == "") {
		return nil, fmt.Errorf("%w: AppRole needs a role_id file and a secret_id file", ErrConfig)
	}
	if cfg.TransitMount == "" {
		cfg.TransitMount = "transit"
	}
	cfg.TransitMount = strings.Trim(cfg.TransitMount, "/")
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 4
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = 100 * time.Millisecond
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = 2 * time.Second
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 1000
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 4
	}
	ac := api.DefaultConfig()
	if ac.Error != nil {
		return nil, fmt.Errorf("%w: vault client: %w", ErrConfig, ac.Error)
	}
	ac.Address = cfg.Addr
	ac.MaxRetries = 0 // retries are ours: only on transport errors, 5xx and 429
	ac.Timeout = 0    // per attempt via ctx
	if cfg.TLS != (VaultTLS{}) {
		if err := ac.ConfigureTLS(&api.TLSConfig{CACert: cfg.TLS.CAFile, ClientCert: cfg.TLS.CertFile, ClientKey: cfg.TLS.KeyFile, TLSServerName: cfg.TLS.ServerName}); err != nil {
			return nil, fmt.Errorf("%w: vault TLS: %w", ErrConfig, err)
		}
	}
	client, err := api.NewClient(ac)
	if err != nil {
		return nil, fmt.Errorf("%w: vault client: %w", ErrConfig, err)
	}
	client.ClearToken()
	v := &Vault{cfg: cfg, client: client, flags: make(map[string]KeyInfo), done: make(chan struct{})}
	v.env = newEnvelope(cfg.Envelope, vaultKEK{v})

	var secret *api.Secret
	if cfg.AppRole != nil {
		if secret, err = v.login(ctx); err != nil {
			return nil, err
		}
	} else {
		client.SetToken(cfg.Token)
		if secret, err = v.lookupSelf(ctx); err != nil {
			return nil, err
		}
	}
	if secret != nil && secret.Auth != nil && (secret.Auth.Renewable || cfg.AppRole != nil) {
		v.wg.Add(1)
		go v.renewLoop(secret)
	}
	return v, nil
}

// Addr returns the Vault address.
func (v *Vault) Addr() string { return v.cfg.Addr }

// login performs an AppRole login and installs the token.
func (v *Vault) login(ctx context.Context) (*api.Secret, error) {
	read := func(path string) (string, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", &Error{Op: "vault approle login", Addr: v.cfg.Addr, Kind: ErrConfig, Err: err}
		}
		return strings.TrimSpace(string(b)), nil
	}
	roleID, err := read(v.cfg.AppRole.RoleIDFile)
	if err != nil {
		return nil, err
	}
	secretID, err := read(v.cfg.AppRole.SecretIDFile)
	if err != nil {
		return nil, err
	}
	mount := v.cfg.AppRole.Mount
	if mount == "" {
		mount = "approle"
	}
	var resp vaultResponse
	err = v.do(ctx, "auth/login", "", http.MethodPut, "auth/"+strings.Trim(mount, "/")+"/login",
		map[string]any{"role_id": roleID, "secret_id": secretID}, 0, false, &resp)
	if err != nil {
		return nil, err
	}
	if resp.Auth == nil || resp.Auth.ClientToken == "" {
		return nil, &Error{Op: "vault approle login", Addr: v.cfg.Addr, Kind: ErrDenied, Err: errors.New("no token in the login response")}
	}
	v.authMu.Lock()
	v.client.SetToken(resp.Auth.ClientToken)
	v.authGen++
	v.authMu.Unlock()
	return &api.Secret{Auth: resp.Auth, LeaseDuration: resp.Auth.LeaseDuration, Renewable: resp.Auth.Renewable}, nil
}

// lookupSelf checks the configured token and returns it as a secret for
// the renewer.
func (v *Vault) lookupSelf(ctx context.Context) (*api.Secret, error) {
	var resp vaultResponse
	if err := v.do(ctx, "token/lookup-self", "", http.MethodGet, "auth/token/lookup-self", nil, 0, false, &resp); err != nil {
		return nil, err
	}
	var d struct {
		TTL       int  `json:"ttl"`
		Renewable bool `json:"renewable"`
	}
	if err := json.Unmarshal(resp.Data, &d); err != nil {
		return nil, &Error{Op: "vault token/lookup-self", Addr: v.cfg.Addr, Kind: ErrUnavailable, Err: errors.New("malformed response")}
	}
	if d.TTL <= 0 {
		return nil, nil // a non-expiring token (e.g. root) needs no renewal
	}
	return &api.Secret{Auth: &api.SecretAuth{ClientToken: v.cfg.Token, Renewable: d.Renewable, LeaseDuration: d.TTL}}, nil
}

// renewLoop keeps the token alive with an api.LifetimeWatcher and, with
// AppRole, logs in again when the lease cannot be renewed any more.
func (v *Vault) renewLoop(secret *api.Secret) {
	defer v.wg.Done()
	for {
		if secret.Auth.Renewable {
			w, err := v.client.NewLifetimeWatcher(&api.LifetimeWatcherInput{Secret: secret})
			if err != nil {
				return
			}
			go w.Start()
		watch:
			for {
				select {
				case <-v.done:
					w.Stop()
					return
				case <-w.RenewCh():
					if v.cfg.Observer != nil {
						v.cfg.Observer(Event{Op: "vault token/renew", Remote: true, Kind: "ok"})
					}
				case err := <-w.DoneCh():
					w.Stop()
					if err != nil && v.cfg.Observer != nil {
						v.cfg.Observer(Event{Op: "vault token/renew", Remote: true, Kind: ErrorKind(classifyTransport(err))})
					}
					break watch
				}
			}
		} else if v.cfg.AppRole != nil {
			// A non-renewable login token: log in again shortly before
			// it expires.
			wait := time.Duration(secret.Auth.LeaseDuration) * time.Second * 2 / 3
			select {
			case <-v.done:
				return
			case <-time.After(wait):
			}
		}
		if v.cfg.AppRole == nil {
			return // a token that cannot be renewed further simply expires
		}
		for attempt := 0; ; attempt++ {
			ctx, cancel := context.WithTimeout(context.Background(), v.cfg.Timeout*time.Duration(v.cfg.MaxAttempts+1))
			s, err := v.login(ctx)
			cancel()
			if err == nil {
				secret = s
				break
			}
			select {
			case <-v.done:
				return
			case <-time.After(v.backoff(attempt)):
			}
		}
	}
}

func classifyTransport(err error) error {
	var re *api.ResponseError
	if errors.As(err, &re) && (re.StatusCode == 401 || re.StatusCode == 403) {
		return ErrDenied
	}
	return ErrUnavailable
}

// backoff returns the wait before attempt+1: exponential from BackoffMin,
// capped at BackoffMax, with "equal jitter" (half fixed, half random).
func (v *Vault) backoff(attempt int) time.Duration {
	d := v.cfg.BackoffMin << min(attempt, 20)
	if d <= 0 || d > v.cfg.BackoffMax {
		d = v.cfg.BackoffMax
	}
	return d/2 + rand.N(d/2+1)
}

// vaultResponse is Vault's response envelope.
type vaultResponse struct {
	Data   json.RawMessage `json:"data"`
	Auth   *api.SecretAuth `json:"auth"`
	Errors []string        `json:"errors"`
}

// batchResult is one item of a transit batch response.
type batchResult struct {
	Ciphertext string `json:"ciphertext"`
	Plaintext  string `json:"plaintext"`
	Error      string `json:"error"`
}

// do sends one request to Vault with retries and decodes the response
// into out. op names the request kind for errors and the Observer; n is
// the number of values it carries; relogin allows one AppRole login and
// retry after a 403. Errors never include the request body.
func (v *Vault) do(ctx context.Context, op, key, method, path string, body any, n int, relogin bool, out *vaultResponse) (err error) {
	start := time.Now()
	defer func() { v.cfg.Observer.observe("vault "+op, true, key, n, start, err) }()
	var payload []byte
	if body != nil {
		if payload, err = json.Marshal(body); err != nil {
			return &Error{Op: "vault " + op, Key: key, Addr: v.cfg.Addr, Kind: ErrConfig, Err: err}
		}
	}
	fail := func(kind, cause error) error {
		return &Error{Op: "vault " + op, Key: key, Addr: v.cfg.Addr, Kind: kind, Err: cause}
	}
	var lastErr error
	for attempt := 0; attempt < v.cfg.MaxAttempts; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return fail(ErrUnavailable, fmt.Errorf("%w (after %d attempts; last: %v)", ctx.Err(), attempt, lastErr))
			case <-time.After(v.backoff(attempt - 1)):
			}
		}
		v.authMu.Lock()
		gen := v.authGen
		v.authMu.Unlock()
		status, raw, err := v.roundTrip(ctx, method, path, payload)
		if err != nil {
			if isTLSVerifyError(err) {
				// A certificate Vault presents and we do not trust is a
				// configuration problem; retrying cannot fix it.
				return fail(ErrConfig, err)
			}
			if ctx.Err() != nil {
				return fail(ErrUnavailable, fmt.Errorf("%w (after %d attempts; last: %v)", ctx.Err(), attempt+1, err))
			}
			lastErr = err
			continue
		}
		*out = vaultResponse{}
		if len(raw) > 0 {
			if jerr := json.Unmarshal(raw, out); jerr != nil && status < 300 {
				return fail(ErrUnavailable, fmt.Errorf("HTTP %d: malformed response", status))
			}
		}
		switch {
		case status >= 200 && status < 300:
			return nil
		case status == http.StatusTooManyRequests || status == http.StatusPreconditionFailed || status >= 500:
			lastErr = fmt.Errorf("HTTP %d%s", status, vaultErrors(out.Errors))
			continue
		case status == http.StatusUnauthorized || status == http.StatusForbidden:
			if relogin && v.cfg.AppRole != nil {
				relogin = false
				if lerr := v.reloginIfCurrent(ctx, gen); lerr == nil {
					attempt--
					continue
				}
			}
			return fail(ErrDenied, fmt.Errorf("HTTP %d%s", status, vaultErrors(out.Errors)))
		case status == http.StatusNotFound:
			return fail(ErrKeyNotFound, fmt.Errorf("HTTP %d%s", status, vaultErrors(out.Errors)))
		case op == "auth/login":
			// Vault answers a bad role_id or secret_id with 400.
			return fail(ErrDenied, fmt.Errorf("HTTP %d%s", status, vaultErrors(out.Errors)))
		default: // other 4xx
			if len(out.Errors) > 0 && strings.Contains(out.Errors[0], "key not found") {
				return fail(ErrKeyNotFound, fmt.Errorf("HTTP %d%s", status, vaultErrors(out.Errors)))
			}
			if i, msg, ok := firstBatchError(out.Data); ok {
				return fail(ErrInvalidCiphertext, fmt.Errorf("value %d: %s", i, msg))
			}
			kind := ErrConfig
			if strings.Contains(op, "decrypt") || strings.Contains(op, "rewrap") {
				kind = ErrInvalidCiphertext
			}
			return fail(kind, fmt.Errorf("HTTP %d%s", status, vaultErrors(out.Errors)))
		}
	}
	return fail(ErrUnavailable, fmt.Errorf("no answer after %d attempts: %v", v.cfg.MaxAttempts, lastErr))
}

// reloginIfCurrent logs in again unless another goroutine already did
// since generation gen.
func (v *Vault) reloginIfCurrent(ctx context.Context, gen uint64) error {
	v.authMu.Lock()
	cur := v.authGen
	v.authMu.Unlock()
	if cur != gen {
		return nil
	}
	_, err := v.login(ctx)
	return err
}

// roundTrip makes one HTTP attempt bounded by Timeout and returns the
// status and body. A transport failure returns an error (retryable).
func (v *Vault) roundTrip(ctx context.Context, method, path string, payload []byte) (int, []byte, error) {
	actx, cancel := context.WithTimeout(ctx, v.cfg.Timeout)
	defer cancel()
	var resp *api.Response
	var err error
	if method == http.MethodGet {
		resp, err = v.client.Logical().ReadRawWithContext(actx, path)
	} else {
		resp, err = v.client.Logical().WriteRawWithContext(actx, path, payload)
	}
	if resp == nil || resp.Response == nil {
		if err == nil {
			err = errors.New("no response")
		}
		return 0, nil, scrubTransport(err)
	}
	defer resp.Body.Close()
	raw, rerr := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if rerr != nil {
		return 0, nil, scrubTransport(rerr)
	}
	return resp.StatusCode, raw, nil
}

// isTLSVerifyError reports a failed verification of Vault's certificate.
func isTLSVerifyError(err error) bool {
	var unknownCA x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var invalid x509.CertificateInvalidError
	var verify *tls.CertificateVerificationError
	return errors.As(err, &unknownCA) || errors.As(err, &hostname) || errors.As(err, &invalid) || errors.As(err, &verify)
}

// scrubTransport keeps a transport error's message short; it never holds
// a request body.
func scrubTransport(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return errors.New("timed out")
	}
	return err
}

func vaultErrors(errs []string) string {
	if len(errs) == 0 {
		return ""
	}
	s := strings.Join(errs, "; ")
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return ": " + s
}

// firstBatchError finds the first failed item of a batch response.
func firstBatchError(data json.RawMessage) (int, string, bool) {
	var d struct {
		BatchResults []batchResult `json:"batch_results"`
	}
	if len(data) == 0 || json.Unmarshal(data, &d) != nil {
		return 0, "", false
	}
	for i, r := range d.BatchResults {
		if r.Error != "" {
			return i, r.Error, true
		}
	}
	return 0, "", false
}

func (v *Vault) transitPath(kind, key string) string {
	return v.cfg.TransitMount + "/" + kind + "/" + key
}

func contextOf(col Column) string { return base64.StdEncoding.EncodeToString([]byte(col.ID)) }

// batch sends items to transit/<kind>/<key> in chunks of BatchSize, up to
// Concurrency chunks at a time, and returns the batch results in order.
// On failure it returns the error of the first failing chunk; a failed
// item is named by its index in items.
func (v *Vault) batch(ctx context.Context, kind string, col Column, items []map[string]any) ([]batchResult, error) {
	out := make([]batchResult, len(items))
	nchunks := (len(items) + v.cfg.BatchSize - 1) / v.cfg.BatchSize
	errs := make([]error, nchunks)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, v.cfg.Concurrency)
	var wg sync.WaitGroup
	for c := range nchunks {
		lo := c * v.cfg.BatchSize
		hi := min(lo+v.cfg.BatchSize, len(items))
		sem <- struct{}{}
		if ctx.Err() != nil {
			<-sem
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if errs[c] = v.chunk(ctx, kind, col, items[lo:hi], lo, out[lo:hi]); errs[c] != nil {
				cancel()
			}
		}()
	}
	wg.Wait()
	// The first failing chunk's error; chunks cancelled because of it
	// come later or report the cancellation, which is not the cause.
	var first error
	for _, err := range errs {
		if err != nil && !errors.Is(err, context.Canceled) {
			return nil, err
		}
		if err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		return nil, first
	}
	return out, nil
}

// chunk sends one batch request for items (which start at index lo) and
// fills out.
func (v *Vault) chunk(ctx context.Context, kind string, col Column, items []map[string]any, lo int, out []batchResult) error {
	op := "transit/" + kind
	var resp vaultResponse
	err := v.do(ctx, op, col.Key, http.MethodPut, v.transitPath(kind, col.Key),
		map[string]any{"batch_input": items}, len(items), true, &resp)
	if err != nil {
		if i, msg, ok := firstBatchError(resp.Data); ok && errors.Is(err, ErrInvalidCiphertext) {
			return &Error{Op: "vault " + op, Key: col.Key, Addr: v.cfg.Addr, Kind: ErrInvalidCiphertext, Err: fmt.Errorf("value %d: %s", lo+i, msg)}
		}
		return err
	}
	var d struct {
		BatchResults []batchResult `json:"batch_results"`
	}
	if err := json.Unmarshal(resp.Data, &d); err != nil || len(d.BatchResults) != len(items) {
		return &Error{Op: "vault " + op, Key: col.Key, Addr: v.cfg.Addr, Kind: ErrUnavailable, Err: errors.New("malformed batch response")}
	}
	for i, r := range d.BatchResults {
		if r.Error != "" {
			return &Error{Op: "vault " + op, Key: col.Key, Addr: v.cfg.Addr, Kind: ErrInvalidCiphertext, Err: fmt.Errorf("value %d: %s", lo+i, r.Error)}
		}
	}
	copy(out, d.BatchResults)
	return nil
}

// checkKey verifies once per key that it exists, is derived, and that its
// convergence matches the column (searchable columns need a convergent
// key, others a randomised one).
func (v *Vault) checkKey(ctx context.Context, col Column) error {
	v.flagsMu.Lock()
	info, ok := v.flags[col.Key]
	v.flagsMu.Unlock()
	if !ok {
		var err error
		if info, err = v.KeyInfo(ctx, col.Key); err != nil {
			return err
		}
		if !info.Exists {
			return &Error{Op: "encrypt", Key: col.Key, Addr: v.cfg.Addr, Kind: ErrKeyNotFound}
		}
		v.flagsMu.Lock()
		v.flags[col.Key] = info
		v.flagsMu.Unlock()
	}
	if !info.Derived {
		return &Error{Op: "encrypt", Key: col.Key, Addr: v.cfg.Addr, Kind: ErrConfig, Err: errors.New("the transit key is not derived; pgveil needs derived keys (one per column)")}
	}
	if info.Convergent != col.Searchable {
		return &Error{Op: "encrypt", Key: col.Key, Addr: v.cfg.Addr, Kind: ErrConfig,
			Err: fmt.Errorf("column %s is searchable=%t but the transit key has convergent_encryption=%t", col.ID, col.Searchable, info.Convergent)}
	}
	return nil
}

func (v *Vault) closed() bool {
	select {
	case <-v.done:
		return true
	default:
		return false
	}
}

// Encrypt implements Service.
func (v *Vault) Encrypt(ctx context.Context, col Column, plaintexts [][]byte) (out [][]byte, err error) {
	defer func(start time.Time) { v.cfg.Observer.observe("encrypt", false, col.Key, len(plaintexts), start, err) }(time.Now())
	if err := v.precheck("encrypt", col); err != nil {
		return nil, err
	}
	if err := v.checkKey(ctx, col); err != nil {
		return nil, err
	}
	if col.mode() == ModeEnvelope {
		return v.env.encrypt(ctx, col, plaintexts)
	}
	c := contextOf(col)
	items := make([]map[string]any, len(plaintexts))
	for i, p := range plaintexts {
		items[i] = map[string]any{"plaintext": base64.StdEncoding.EncodeToString(p), "context": c}
	}
	res, err := v.batch(ctx, "encrypt", col, items)
	if err != nil {
		return nil, err
	}
	out = make([][]byte, len(res))
	for i, r := range res {
		out[i] = []byte(r.Ciphertext)
	}
	return out, nil
}

func (v *Vault) precheck(op string, col Column) error {
	if v.closed() {
		return &Error{Op: op, Key: col.Key, Addr: v.cfg.Addr, Kind: ErrClosed}
	}
	return col.Validate()
}

// Decrypt implements Service.
func (v *Vault) Decrypt(ctx context.Context, col Column, ciphertexts [][]byte) (out [][]byte, err error) {
	defer func(start time.Time) { v.cfg.Observer.observe("decrypt", false, col.Key, len(ciphertexts), start, err) }(time.Now())
	if err := v.precheck("decrypt", col); err != nil {
		return nil, err
	}
	if col.mode() == ModeEnvelope {
		return v.env.decrypt(ctx, col, ciphertexts)
	}
	items, err := v.ciphertextItems("decrypt", col, ciphertexts)
	if err != nil {
		return nil, err
	}
	res, err := v.batch(ctx, "decrypt", col, items)
	if err != nil {
		return nil, err
	}
	out = make([][]byte, len(res))
	for i, r := range res {
		if out[i], err = base64.StdEncoding.DecodeString(r.Plaintext); err != nil {
			return nil, &Error{Op: "vault transit/decrypt", Key: col.Key, Addr: v.cfg.Addr, Kind: ErrUnavailable, Err: fmt.Errorf("value %d: malformed plaintext in response", i)}
		}
	}
	return out, nil
}

func (v *Vault) ciphertextItems(op string, col Column, ciphertexts [][]byte) ([]map[string]any, error) {
	c := contextOf(col)
	items := make([]map[string]any, len(ciphertexts))
	for i, ct := range ciphertexts {
		if !isVersionedCiphertext(vaultSource, ct) {
			return nil, &Error{Op: op, Key: col.Key, Addr: v.cfg.Addr, Kind: ErrInvalidCiphertext, Err: fmt.Errorf("value %d is not a Vault transit ciphertext", i)}
		}
		items[i] = map[string]any{"ciphertext": string(ct), "context": c}
	}
	return items, nil
}

// Rewrap implements Service.
func (v *Vault) Rewrap(ctx context.Context, col Column, ciphertexts [][]byte) (out [][]byte, err error) {
	defer func(start time.Time) { v.cfg.Observer.observe("rewrap", false, col.Key, len(ciphertexts), start, err) }(time.Now())
	if err := v.precheck("rewrap", col); err != nil {
		return nil, err
	}
	if err := v.checkKey(ctx, col); err != nil {
		return nil, err
	}
	if col.mode() == ModeEnvelope {
		return v.env.rewrap(ctx, col, ciphertexts)
	}
	items, err := v.ciphertextItems("rewrap", col, ciphertexts)
	if err != nil {
		return nil, err
	}
	res, err := v.batch(ctx, "rewrap", col, items)
	if err != nil {
		return nil, err
	}
	out = make([][]byte, len(res))
	for i, r := range res {
		out[i] = []byte(r.Ciphertext)
	}
	return out, nil
}

// IsCiphertext implements Service.
func (v *Vault) IsCiphertext(col Column, b []byte) bool {
	if col.mode() == ModeEnvelope {
		return v.env.isCiphertext(b)
	}
	return isVersionedCiphertext(vaultSource, b)
}

// KeyInfo implements Service; it reads transit/keys/<key>.
func (v *Vault) KeyInfo(ctx context.Context, key string) (info KeyInfo, err error) {
	defer func(start time.Time) { v.cfg.Observer.observe("keyinfo", false, key, 0, start, err) }(time.Now())
	if err := checkKeyName(key); err != nil {
		return KeyInfo{}, err
	}
	var resp vaultResponse
	err = v.do(ctx, "transit/keys", key, http.MethodGet, v.transitPath("keys", key), nil, 0, true, &resp)
	if errors.Is(err, ErrKeyNotFound) {
		return KeyInfo{Name: key}, nil
	}
	if err != nil {
		return KeyInfo{}, err
	}
	var d struct {
		LatestVersion        int  `json:"latest_version"`
		MinDecryptionVersion int  `json:"min_decryption_version"`
		Derived              bool `json:"derived"`
		Convergent           bool `json:"convergent_encryption"`
	}
	if err := json.Unmarshal(resp.Data, &d); err != nil {
		return KeyInfo{}, &Error{Op: "vault transit/keys", Key: key, Addr: v.cfg.Addr, Kind: ErrUnavailable, Err: errors.New("malformed response")}
	}
	return KeyInfo{Name: key, Exists: true, LatestVersion: d.LatestVersion, MinDecryptionVersion: d.MinDecryptionVersion, Derived: d.Derived, Convergent: d.Convergent}, nil
}

// EnsureKey creates the transit key name if it does not exist: AES-256-GCM,
// derived, and convergent when searchable. An existing key must have the
// same settings, else it returns an ErrConfig error.
func (v *Vault) EnsureKey(ctx context.Context, name string, searchable bool) error {
	if err := checkKeyName(name); err != nil {
		return err
	}
	info, err := v.KeyInfo(ctx, name)
	if err != nil {
		return err
	}
	if !info.Exists {
		var resp vaultResponse
		err := v.do(ctx, "transit/keys", name, http.MethodPut, v.transitPath("keys", name),
			map[string]any{"type": "aes256-gcm96", "derived": true, "convergent_encryption": searchable}, 0, true, &resp)
		if err != nil {
			return err
		}
		if info, err = v.KeyInfo(ctx, name); err != nil {
			return err
		}
	}
	if !info.Derived || info.Convergent != searchable {
		return &Error{Op: "ensure key", Key: name, Addr: v.cfg.Addr, Kind: ErrConfig,
			Err: fmt.Errorf("existing key has derived=%t convergent_encryption=%t, want derived=true convergent_encryption=%t", info.Derived, info.Convergent, searchable)}
	}
	return nil
}

// RotateKey adds a new version to the transit key name and returns it.
func (v *Vault) RotateKey(ctx context.Context, name string) (int, error) {
	if err := checkKeyName(name); err != nil {
		return 0, err
	}
	var resp vaultResponse
	if err := v.do(ctx, "transit/keys/rotate", name, http.MethodPut, v.transitPath("keys", name)+"/rotate", map[string]any{}, 0, true, &resp); err != nil {
		return 0, err
	}
	info, err := v.KeyInfo(ctx, name)
	if err != nil {
		return 0, err
	}
	return info.LatestVersion, nil
}

// Close implements Service: it stops token renewal and drops cached keys.
func (v *Vault) Close() error {
	v.once.Do(func() {
		close(v.done)
		v.wg.Wait()
		v.env.close()
		v.client.ClearToken()
	})
	return nil
}

// vaultKEK makes envelope data keys with transit/datakey/plaintext (one
// call returns the key and its wrapped form, which transit/datakey/wrapped
// followed by a decrypt would take two calls for) and unwraps them with a
// batched transit/decrypt.
type vaultKEK struct{ v *Vault }

func (w vaultKEK) addr() string { return w.v.cfg.Addr }

func (w vaultKEK) isWrapped(s string) bool { return isVersionedCiphertext(vaultSource, []byte(s)) }

func (w vaultKEK) newDataKey(ctx context.Context, col Column) ([]byte, string, error) {
	var resp vaultResponse
	err := w.v.do(ctx, "transit/datakey", col.Key, http.MethodPut, w.v.transitPath("datakey/plaintext", col.Key),
		map[string]any{"context": contextOf(col), "bits": dataKeyBytes * 8}, 1, true, &resp)
	if err != nil {
		return nil, "", err
	}
	var d struct {
		Plaintext  string `json:"plaintext"`
		Ciphertext string `json:"ciphertext"`
	}
	if err := json.Unmarshal(resp.Data, &d); err != nil {
		return nil, "", &Error{Op: "vault transit/datakey", Key: col.Key, Addr: w.v.cfg.Addr, Kind: ErrUnavailable, Err: errors.New("malformed response")}
	}
	plain, err := base64.StdEncoding.DecodeString(d.Plaintext)
	if err != nil || len(plain) != dataKeyBytes || !w.isWrapped(d.Ciphertext) {
		return nil, "", &Error{Op: "vault transit/datakey", Key: col.Key, Addr: w.v.cfg.Addr, Kind: ErrUnavailable, Err: errors.New("malformed data key in response")}
	}
	return plain, d.Ciphertext, nil
}

func (w vaultKEK) unwrapDataKeys(ctx context.Context, col Column, wrapped []string) ([][]byte, error) {
	in := make([][]byte, len(wrapped))
	for i, s := range wrapped {
		in[i] = []byte(s)
	}
	items, err := w.v.ciphertextItems("envelope unwrap", col, in)
	if err != nil {
		return nil, err
	}
	res, err := w.v.batch(ctx, "decrypt", col, items)
	if err != nil {
		return nil, err
	}
	out := make([][]byte, len(res))
	for i, r := range res {
		if out[i], err = base64.StdEncoding.DecodeString(r.Plaintext); err != nil || len(out[i]) != dataKeyBytes {
			return nil, &Error{Op: "envelope unwrap", Key: col.Key, Addr: w.v.cfg.Addr, Kind: ErrInvalidCiphertext, Err: fmt.Errorf("data key %d is malformed", i)}
		}
	}
	return out, nil
}

func (w vaultKEK) rewrapDataKeys(ctx context.Context, col Column, wrapped []string) ([]string, error) {
	in := make([][]byte, len(wrapped))
	for i, s := range wrapped {
		in[i] = []byte(s)
	}
	items, err := w.v.ciphertextItems("envelope rewrap", col, in)
	if err != nil {
		return nil, err
	}
	res, err := w.v.batch(ctx, "rewrap", col, items)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(res))
	for i, r := range res {
		out[i] = r.Ciphertext
	}
	return out, nil
}

var _ Service = (*Vault)(nil)
