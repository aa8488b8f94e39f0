#!/usr/bin/env bash
# The evidence blob-store tests against a real S3-compatible server: moto's server (PyPI),
# installed into a virtualenv under target/ (git-ignored) on first use, started on 127.0.0.1
# on a free port, stopped afterwards. Idempotent; safe to run again.
#
# Runs: the `evidence` tests of the server's API test binary with DOORSTEP_TEST_S3_ENDPOINT set
# (the S3 ones skip with a notice when it is not). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

venv="$root/target/test-s3-venv"
if [ ! -x "$venv/bin/moto_server" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet 'moto[server]'
fi

# A free port: bind port 0, read it back, release it.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
log=$(mktemp)
"$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
moto_pid=$!
cleanup() {
    kill "$moto_pid" 2>/dev/null || true
    wait "$moto_pid" 2>/dev/null || true
    rm -f "$log"
}
trap cleanup EXIT

# Wait until it answers (bounded; it starts in about a second).
for _ in $(seq 1 100); do
    if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/')" 2>/dev/null; then
        break
    fi
    if ! kill -0 "$moto_pid" 2>/dev/null; then
        echo "moto_server exited:" >&2
        cat "$log" >&2
        exit 1
    fi
    sleep 0.1
done

export DOORSTEP_TEST_S3_ENDPOINT="http://127.0.0.1:$port"
echo "moto S3 server on $DOORSTEP_TEST_S3_ENDPOINT"
cargo test -p doorstep-server --test api evidence "$@"
