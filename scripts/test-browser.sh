#!/usr/bin/env bash
# The staff web view in a real browser: Debian's headless Chromium, driven by playwright-core,
# signs in, opens a case, resolves a conflict, downloads the evidence pack, checks the case page
# at tablet width and saves screenshots under tests/artefacts/ (git-ignored).
#
# Installs what it needs on a fresh Debian machine: the `chromium` package (only when
# /usr/bin/chromium is missing), Node.js and npm when missing, and playwright-core (npm; no
# browser download).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo=sudo; fi
missing=()
if [ ! -x /usr/bin/chromium ]; then missing+=(chromium); fi
if ! command -v npm >/dev/null; then missing+=(nodejs npm); fi
if [ ${#missing[@]} -gt 0 ]; then
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "${missing[@]}"
fi

(
    cd server/tests/browser
    if [ -f package-lock.json ]; then
        npm ci --no-audit --no-fund
    else
        npm install --no-audit --no-fund
    fi
)

cargo build -p doorstep-server --bin doorstep-server --example seed_web_demo
target_dir=${CARGO_TARGET_DIR:-$root/target}

work=$(mktemp -d)
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

"$target_dir/debug/examples/seed_web_demo" "$work/data"

# Port 0: the server picks a free port and prints its address in the start-up notice, which
# arrives through a FIFO: reading it blocks until the server is listening (no sleeps).
mkfifo "$work/notice"
"$target_dir/debug/doorstep-server" --demo --data-dir "$work/data" --listen 127.0.0.1:0 \
    >"$work/notice" 2>"$work/server.log" &
server_pid=$!
exec 3<"$work/notice"
base=""
while IFS= read -r line <&3; do
    case $line in
        *"listening on http://"*)
            base=${line##*listening on }
            break
            ;;
    esac
done
if [ -z "$base" ]; then
    echo "the server did not start:" >&2
    cat "$work/server.log" >&2
    exit 1
fi

mkdir -p tests/artefacts
DOORSTEP_URL=$base ARTEFACTS=$root/tests/artefacts node server/tests/browser/web-view.test.mjs
