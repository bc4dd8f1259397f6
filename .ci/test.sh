#!/usr/bin/env bash
# The README's test command: the workspace's tests, then every fuzz target for a bounded time
# (.ci/fuzz.sh installs the nightly toolchain and cargo-fuzz when missing). .ci/run calls it
# after the format and lint gates.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d ../shared/vectors ]; then
  echo "error: test vectors not found at ../shared/vectors (relative to the repository root)" >&2
  exit 1
fi
# promtool and openapi-spec-validator, installed when missing (and put on PATH).
. .ci/tools.sh
echo "== cargo test --workspace"
cargo test --workspace
bash .ci/fuzz.sh
