#!/usr/bin/env bash
# build-vault.sh builds HashiCorp Vault v1.14.1 (MPL-2.0) from the Go module
# proxy into a per-machine cache, for the tests of vaultkms and the
# integration suite (see /work/shared/vault-dev.md and docs/encryption.md).
# It is idempotent: an existing binary is reported and left alone. A cold
# build takes about 4 minutes and ~5 GB of module and build caches.
# It prints the binary's path on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=v1.14.1
CACHE=${PGVEIL_CACHE:-$HOME/.cache/pgveil}
OUT=$CACHE/vault-$VERSION/vault
MOD=integration/tools/vault

if [[ -x $OUT ]]; then
	got=$("$OUT" version 2>&1 | head -1 || true)
	if [[ $got == "Vault $VERSION"* ]]; then
		echo "build-vault: present: $got" >&2
		echo "$OUT"
		exit 0
	fi
	echo "build-vault: $OUT does not run ($got); rebuilding" >&2
	rm -f "$OUT"
fi

# Only Vault releases up to 1.14.x are open source; check what we build.
(cd "$MOD" && go mod download github.com/hashicorp/vault)
dir=$(cd "$MOD" && go list -m -f '{{.Dir}}' github.com/hashicorp/vault)
if ! grep -q 'Mozilla Public License, version 2.0' "$dir/LICENSE"; then
	echo "build-vault: $dir/LICENSE is not MPL-2.0; refusing to build" >&2
	exit 1
fi

echo "build-vault: building vault $VERSION (cold: ~4 min) into $OUT" >&2
mkdir -p "$(dirname "$OUT")"
tmp=$OUT.tmp.$$
trap 'rm -f "$tmp"' EXIT
(cd "$MOD" && go build -trimpath -ldflags="-s -w" -o "$tmp" .)
# The binary must run: a bad build panics at start (see the godebug line
# in integration/tools/vault/go.mod).
got=$("$tmp" version 2>&1 | head -1 || true)
if [[ $got != "Vault $VERSION"* ]]; then
	echo "build-vault: the built binary does not run: $got" >&2
	exit 1
fi
mv "$tmp" "$OUT"
echo "build-vault: built: $got" >&2
echo "$OUT"
