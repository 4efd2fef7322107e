#!/usr/bin/env bash
# Runs every test: the Rust suite (unit, paused-clock and integration tests against the real
# server) and `buf lint` on proto/. Installs what it needs; safe to run on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

BUF_VERSION=1.75.0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "==> cargo test"
cargo test --locked --all-targets 2>&1 | tee "$log"

echo "==> buf lint (proto/)"
if ! command -v npx >/dev/null 2>&1; then
  echo "buf lint needs Node.js (npx); install it (e.g. apt-get install nodejs npm) and re-run" >&2
  exit 1
fi
npx --yes "@bufbuild/buf@${BUF_VERSION}" lint
echo "buf lint: clean"

# One closing line over every cargo test target.
awk '/^test result:/ { p += $4; f += $6 } END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
