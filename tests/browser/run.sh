#!/usr/bin/env bash
# End-to-end tests of `clo serve` with its web UI: builds the UI (trunk) and the binary, starts a
# real server on loopback with the built-in toy model (--toy) and a bearer token, then runs
# the browser tests (Debian's chromium driven by playwright-core) and the OpenAI client test
# (the `openai` npm package). Screenshots and the server log go to $CLO_E2E_ARTIFACTS
# (default target/e2e-artifacts).
set -euo pipefail
cd "$(dirname "$0")/../.."
ART="${CLO_E2E_ARTIFACTS:-target/e2e-artifacts}"
rm -rf "$ART"
mkdir -p "$ART"
ART="$(cd "$ART" && pwd)"
# The test files to run (arguments; default: all).
TESTS=("$@")
[ ${#TESTS[@]} -gt 0 ] || TESTS=(tests/browser/ui.test.mjs tests/browser/openai.test.mjs tests/browser/engine.test.mjs tests/browser/csrf.test.mjs)

trunk build
# The test command's own build (README): `cargo test` builds target/debug/clo for the CLI tests,
# and this reuses it (compiles nothing after that command). `cargo build -p clo` would compile
# clo-core and clo again, as its features differ from the whole workspace's.
cargo test --workspace --features clo/mpi --no-run --quiet
(cd tests/browser && { npm ls --depth=0 >/dev/null 2>&1 || npm ci --no-audit --no-fund; })

WORK="$(mktemp -d)"
mkdir -p "$WORK/evals/base/gen"
cp tests/browser/fixtures/gen-results.json "$WORK/evals/base/gen/results.json"
TOKEN="e2e-$RANDOM$RANDOM"
"${CARGO_TARGET_DIR:-target}/debug/clo" serve --port 0 --workdir "$WORK" --toy --token "$TOKEN" --web dist \
  --model tests/fixtures/models/qwen2 \
  >"$ART/server.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT

URL=""
for _ in $(seq 1 600); do
  URL="$(grep -o 'http://[0-9.:]*' "$ART/server.log" | head -n1 || true)"
  [ -n "$URL" ] && break
  if ! kill -0 "$PID" 2>/dev/null; then
    echo "clo serve exited:" >&2
    cat "$ART/server.log" >&2
    exit 1
  fi
  sleep 0.1
done
[ -n "$URL" ] || { echo "clo serve did not start within 60 s" >&2; exit 1; }
echo "e2e: clo serve at $URL"

CLO_URL="$URL" CLO_TOKEN="$TOKEN" CLO_E2E_ARTIFACTS="$ART" CLO_WORKDIR="$WORK" \
  CLO_BIN="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/clo" \
  node --test --test-concurrency=1 "${TESTS[@]}"
echo "e2e: screenshots in $ART"
