package vaultkms

import (
	"context"
	"testing"
)

// BenchmarkDecrypt10000 decrypts 10,000 values per iteration with each
// implementation: Vault transit one request per value (what the design
// forbids), Vault transit batched, envelope over Vault (warm and cold data
// key cache), and the keyring in both modes. Run it short:
//
//	go test -run '^$' -bench Decrypt10000 -benchtime 3x ./vaultkms
func BenchmarkDecrypt10000(b *testing.B) {
	const n = 10000
	ctx := context.Background()
	in := values(n, "4111-2222-3333-%04d")
	transitCol := Column{ID: "public.payments.card_number", Key: keyPlain}
	envCol := Column{ID: "public.payments.card_number", Key: keyPlain, Mode: ModeEnvelope}

	k, err := NewKeyring(KeyringConfig{Path: newKeyringFile(b)})
	if err != nil {
		b.Fatal(err)
	}
	defer k.Close()
	s := startVault(b)
	v := newVault(b, VaultConfig{Addr: s.Addr(), Token: s.Token()})

	type bench struct {
		name string
		svc  Service
		col  Column
		run  func(b *testing.B, svc Service, col Column, cts [][]byte)
	}
	batch := func(b *testing.B, svc Service, col Column, cts [][]byte) {
		if _, err := svc.Decrypt(ctx, col, cts); err != nil {
			b.Fatal(err)
		}
	}
	for _, bc := range []bench{
		{"vault-transit-per-value", v, transitCol, func(b *testing.B, svc Service, col Column, cts [][]byte) {
			for _, c := range cts {
				if _, err := svc.Decrypt(ctx, col, [][]byte{c}); err != nil {
					b.Fatal(err)
				}
			}
		}},
		{"vault-transit-batch", v, transitCol, batch},
		{"vault-envelope-warm", v, envCol, batch},
		{"vault-envelope-cold", v, envCol, func(b *testing.B, svc Service, col Column, cts [][]byte) {
			svc.(*Vault).env.cache.clear()
			batch(b, svc, col, cts)
		}},
		{"keyring-transit", k, transitCol, batch},
		{"keyring-envelope", k, envCol, batch},
	} {
		b.Run(bc.name, func(b *testing.B) {
			cts, err := bc.svc.Encrypt(ctx, bc.col, in)
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for b.Loop() {
				bc.run(b, bc.svc, bc.col, cts)
			}
			b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "values/s")
		})
	}
}
