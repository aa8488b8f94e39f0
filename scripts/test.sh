#!/usr/bin/env bash
# Runs every test of the workspace, as CI does. Installs what it needs on a fresh machine.
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
cargo --version
rustup component list --installed 2>/dev/null | grep -E '^(rustfmt|clippy)' || true

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests (unit, property, integration, doc)"
cargo test --workspace --locked

step "benchmarks compile"
cargo bench --workspace --locked --no-run

printf '\nAll tests passed.\n'
