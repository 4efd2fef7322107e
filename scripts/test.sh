#!/usr/bin/env bash
# Runs every test, installing what it needs; safe to run on a fresh machine:
#   1. cargo test: unit, paused-clock and integration tests against the real server (and,
#      for state shared across replicas, real redis-server processes on free ports);
#   2. pytest: the Helm chart rendered and validated offline (tests/helm), and real clients,
#      grpcurl, a generated Python client and the examples/ clients (Python, TypeScript, Go),
#      against the real binary (tests/e2e);
#   3. buf lint on proto/, and buf breaking against the proto's previous version.
# Ends with one line counting every test: "all tests: N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."

BUF_VERSION=1.75.0
VENV=.venv-test
cargo_log=$(mktemp)
pytest_log=$(mktemp)
trap 'rm -f "$cargo_log" "$pytest_log"' EXIT

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "scripts/test.sh needs $1: $2" >&2; exit 1; }
}
need cargo "install Rust (rustup.rs)"
need python3 "install Python 3.9+"
need npx "install Node.js and npm (e.g. apt-get install nodejs npm)"

echo "==> redis-server (Debian's package), which the shared-state tests start on free ports"
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh needs root to apt-get install redis-server (or install it yourself)" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >/dev/null
fi
redis-server --version

echo "==> cargo test"
cargo test --locked --all-targets 2>&1 | tee "$cargo_log"

echo "==> Python tools ($VENV)"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt

echo "==> examples/node: npm ci, and its stubs generated from proto/ (buf generate)"
(cd examples/node && npm ci --no-audit --no-fund --loglevel=error && npx --no-install buf generate)

echo "==> examples/go: built offline with Debian's Go and grpc-go packages"
examples/go/build.sh

echo "==> pytest: Helm chart and real clients"
LLMROUTER_BIN="$PWD/target/debug/llm-router" "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/helm tests/e2e 2>&1 | tee "$pytest_log"

echo "==> buf lint (proto/)"
npx --yes "@bufbuild/buf@${BUF_VERSION}" lint
echo "buf lint: clean"

echo "==> buf breaking (proto/ against its previous version)"
if git diff --quiet HEAD -- proto 2>/dev/null; then
  # Unchanged since the last commit: compare with the version before the last proto change.
  against=$(git log -n 2 --format=%H -- proto | sed -n 2p)
else
  against=HEAD
fi
if [ -n "$against" ]; then
  npx --yes "@bufbuild/buf@${BUF_VERSION}" breaking --against ".git#ref=${against}"
  echo "buf breaking: no breaking change against ${against}"
else
  echo "buf breaking: this clone has no earlier proto version to compare with"
fi

cargo_counts=$(awk '/^test result:/ { p += $4; f += $6 } END { printf "%d %d", p, f }' "$cargo_log")
py_passed=$(grep -Eo '[0-9]+ passed' "$pytest_log" | tail -1 | grep -Eo '[0-9]+' || echo 0)
py_failed=$(grep -Eo '[0-9]+ failed' "$pytest_log" | tail -1 | grep -Eo '[0-9]+' || echo 0)
read -r cargo_passed cargo_failed <<<"$cargo_counts"
echo "all tests: $((cargo_passed + py_passed)) passed, $((cargo_failed + py_failed)) failed"
