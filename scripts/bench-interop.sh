#!/usr/bin/env bash
# The interop benchmark: one workload against Doorstep (HTTP batch sync and WebSocket),
# @automerge/automerge-repo-sync-server 0.2.8 (npm) and a samod 0.16 server, in one run.
# Installs the npm server into target/bench/npm, builds release binaries (the samod server is
# not a workspace member: its own Cargo.lock and target/), runs, prints the table and writes it
# to target/bench/interop.md and .json.
# Usage: scripts/bench-interop.sh [interop-bench flags]   (quick: --visits 2 --big-visits 200)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"

npm_dir=target/bench/npm
if [ ! -f "$npm_dir/node_modules/@automerge/automerge-repo-sync-server/package.json" ]; then
  mkdir -p "$npm_dir"
  echo '{"name":"doorstep-bench-npm","private":true}' > "$npm_dir/package.json"
  npm install --prefix "$npm_dir" --no-audit --no-fund @automerge/automerge-repo-sync-server@0.2.8
fi

cargo build --release --locked --manifest-path bench/samod-server/Cargo.toml
cargo build --release --locked -p doorstep-server -p doorstep-interop-bench

exec target/release/interop-bench \
  --doorstep-bin target/release/doorstep-server \
  --samod-bin bench/samod-server/target/release/bench-samod-server \
  --npm-dir "$npm_dir" \
  --out target/bench/interop \
  "$@"
