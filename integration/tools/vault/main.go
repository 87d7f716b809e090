// Command vault builds HashiCorp Vault v1.14.1 (MPL-2.0, the last open-source
// release line) from the Go module proxy, so pgveil's tests can run a real
// Vault dev server. It lives in its own module so the project's go.mod stays
// clean and `go test ./...` does not walk into it; scripts/build-vault.sh
// builds it once per machine.
package main

import (
	"os"

	"github.com/hashicorp/vault/command"
)

func main() { os.Exit(command.Run(os.Args[1:])) }
