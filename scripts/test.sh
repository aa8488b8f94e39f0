#!/usr/bin/env bash
# Runs every test of the workspace, as CI does. Installs what it needs on a fresh machine.
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
cargo --version
rustup component list --installed 2>/dev/null | grep -E '^(rustfmt|clippy)' || true

step "PostgreSQL for the server's storage suite"
# Every storage test runs on SQLite and on PostgreSQL. Point DOORSTEP_TEST_POSTGRES_URL at a
# server where the user may create databases (each test makes and drops its own).
export DOORSTEP_TEST_POSTGRES_URL="${DOORSTEP_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
if command -v pg_isready >/dev/null 2>&1; then
  pg_isready -d "$DOORSTEP_TEST_POSTGRES_URL" || {
    echo "PostgreSQL is not reachable at $DOORSTEP_TEST_POSTGRES_URL." >&2
    echo "Start one, or set DOORSTEP_TEST_POSTGRES_URL=postgres://USER@HOST:PORT/DB." >&2
    exit 1
  }
fi

step "system packages and toolchains (apt, npm), before any build"
# libssl-dev is needed by every workspace build (the bridge links SQLCipher).
scripts/test-bindings.sh --install-only

step "format"
cargo fmt --all -- --check

step "lint (also type-checks the benchmarks)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests (unit, property, integration, doc)"
cargo test --workspace --locked

step "evidence blob store against a local S3-compatible server (moto, from PyPI)"
scripts/test-s3.sh

step "the phone core through its generated bindings (Python, Kotlin; Swift drift)"
scripts/test-bindings.sh

step "the staff web view in headless Chromium (playwright-core)"
scripts/test-browser.sh

printf '\nAll tests passed.\n'
