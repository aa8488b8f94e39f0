#!/usr/bin/env bash
# Tests the mobile bridge through its generated bindings, as a host app would use it:
# builds the cdylib, generates Kotlin, Swift and Python bindings with the workspace's
# `uniffi-bindgen`, fails if the committed Swift bindings drifted, then runs pytest over the
# Python bindings and JUnit 5 over the Kotlin bindings on the JVM, both against a real
# doorstep-server with invented demo data; the end-to-end suite (tests/end_to_end) also drives
# a real automerge-repo JS client on Node.js. Installs what it needs on a fresh Debian machine
# and is safe to run again.
#
# Usage: scripts/test-bindings.sh            (from anywhere)
#        UPDATE_SWIFT_BINDINGS=1 scripts/test-bindings.sh   rewrites the committed Swift copy
#        DOORSTEP_SERVER_BIN=path scripts/test-bindings.sh  uses that server binary
#        scripts/test-bindings.sh --install-only            only installs the toolchain (libssl-dev
#            is needed by any workspace build, since the bridge links SQLCipher) and the JS
#            client's npm packages
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

step() { printf '\n==> %s\n' "$*"; }

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
export CARGO_TARGET_DIR=$TARGET
OUT=$TARGET/bindings
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/doorstep
KOTLIN_VERSION=2.4.20
KOTLIN_HOME=$CACHE/kotlin-compiler-$KOTLIN_VERSION/node_modules/kotlin-compiler
SWIFT_COMMITTED=$ROOT/mobile-bridge/bindings/swift

step "system packages (libssl-dev for SQLCipher, libjna-java and junit5 for the JVM run, Node.js)"
missing=()
for package in libssl-dev libjna-java junit5; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
command -v npm >/dev/null || missing+=(nodejs npm)
if ((${#missing[@]})); then
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
else
    echo "already installed"
fi
command -v java >/dev/null || { echo "Java 17 or later is required" >&2; exit 1; }

step "Kotlin compiler $KOTLIN_VERSION (npm, cached in $CACHE)"
if [[ ! -x $KOTLIN_HOME/bin/kotlinc ]]; then
    mkdir -p "$CACHE/kotlin-compiler-$KOTLIN_VERSION"
    npm install --prefix "$CACHE/kotlin-compiler-$KOTLIN_VERSION" --no-audit --no-fund \
        "kotlin-compiler@$KOTLIN_VERSION"
fi
echo "$KOTLIN_HOME/bin/kotlinc"

step "the end-to-end suite's automerge-repo JS client (npm ci in tests/end_to_end/js)"
JS_DIR=$ROOT/tests/end_to_end/js
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
((node_major >= 20)) || { echo "Node.js 20 or later is required" >&2; exit 1; }
# After a clean install the lock is copied into node_modules: install again only when the
# committed lock differs from that copy (or node_modules is gone).
JS_STAMP=$JS_DIR/node_modules/.doorstep-package-lock.json
if cmp -s "$JS_DIR/package-lock.json" "$JS_STAMP"; then
    echo "already installed"
else
    (cd "$JS_DIR" && npm ci --no-audit --no-fund)
    cp "$JS_DIR/package-lock.json" "$JS_STAMP"
fi
[[ ${1:-} == --install-only ]] && exit 0

step "build the bridge (cdylib on its own), the generator and the server"
# Built in separate calls: building the cdylib together with uniffi-bindgen merges features.
cargo build --locked -p doorstep-mobile-bridge
cargo build --locked -p uniffi-bindgen
LIB=$TARGET/debug/libdoorstep_mobile_bridge.so
# DOORSTEP_SERVER_BIN may name an already built server (e.g. a release build); else build it.
if [[ -z ${DOORSTEP_SERVER_BIN:-} ]]; then
    cargo build --locked -p doorstep-server
    export DOORSTEP_SERVER_BIN=$TARGET/debug/doorstep-server
fi
echo "server: $DOORSTEP_SERVER_BIN"

step "generate bindings"
rm -rf "$OUT/python" "$OUT/kotlin" "$OUT/swift"
for language in python kotlin swift; do
    "$TARGET/debug/uniffi-bindgen" generate --no-format --library "$LIB" --language "$language" \
        --out-dir "$OUT/$language"
done
cp "$LIB" "$OUT/python/"

step "Swift bindings match the committed copy"
if [[ ${UPDATE_SWIFT_BINDINGS:-0} == 1 ]]; then
    rm -rf "$SWIFT_COMMITTED" && mkdir -p "$SWIFT_COMMITTED"
    cp "$OUT/swift/"* "$SWIFT_COMMITTED/"
    echo "rewrote $SWIFT_COMMITTED"
fi
if ! diff -ru "$SWIFT_COMMITTED" "$OUT/swift"; then
    echo "The Swift bindings drifted from the code: run UPDATE_SWIFT_BINDINGS=1 $0 and commit." >&2
    exit 1
fi
echo "no drift"

step "pytest over the Python bindings"
VENV=$OUT/venv
[[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip show pytest >/dev/null 2>&1 ||
    "$VENV/bin/python" -m pip install --quiet "pytest==8.*"
PYTHONPATH="$OUT/python:$ROOT/mobile-bridge/tests/python" \
    "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$ROOT/mobile-bridge/tests/python" \
    "$ROOT/tests/end_to_end"

step "JUnit 5 over the Kotlin bindings (JVM, JNA)"
CLASSES=$OUT/kotlin-classes
rm -rf "$CLASSES" && mkdir -p "$CLASSES"
JARS=/usr/share/java
COMPILE_CP="$JARS/jna.jar:$JARS/junit-jupiter-api.jar:$JARS/apiguardian-api.jar:$JARS/opentest4j.jar:$KOTLIN_HOME/lib/kotlinx-coroutines-core-jvm.jar"
"$KOTLIN_HOME/bin/kotlinc" -nowarn -jvm-target 17 -cp "$COMPILE_CP" -d "$CLASSES" \
    "$OUT/kotlin" "$ROOT/mobile-bridge/tests/kotlin"
RUN_CP="$CLASSES:$COMPILE_CP:$KOTLIN_HOME/lib/kotlin-stdlib.jar"
set +e
java -Djna.library.path="$TARGET/debug" \
    -jar "$JARS/junit-platform-console-standalone.jar" \
    --class-path "$RUN_CP" --select-package doorstep.bridge.tests \
    --details=tree --disable-banner --disable-ansi-colors 2>&1 | tee "$OUT/junit.log"
status=${PIPESTATUS[0]}
set -e
passed=$(sed -n 's/.*\[ *\([0-9]*\) tests successful *\].*/\1/p' "$OUT/junit.log")
failed=$(sed -n 's/.*\[ *\([0-9]*\) tests failed *\].*/\1/p' "$OUT/junit.log")
echo "Kotlin: ${passed:-0} passed, ${failed:-0} failed"
if [[ $status -ne 0 || ${passed:-0} -eq 0 ]]; then
    echo "the Kotlin tests failed" >&2
    exit 1
fi

if [[ ${SKIP_BENCH:-0} != 1 ]]; then
    step "benchmark: 200 cases on one phone (SKIP_BENCH=1 skips)"
    PYTHONPATH="$OUT/python:$ROOT/mobile-bridge/tests/python" \
        "$VENV/bin/python" "$ROOT/mobile-bridge/tests/python/bench_bridge.py"
fi

printf '\nBindings tests passed.\n'
