# Sourced by scripts/*: creates .venv on first use (torch first, then the package
# with its extras) and reinstalls when setup.cfg changes. Also fetches anvil from npm.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${FLOCKD_PYTHON:-python3.11}"

ensure_venv() {
    local extras="${1:-test}"
    local stamp="$VENV/.flockd-installed"
    local want
    want="$(sha256sum "$ROOT/setup.cfg" | cut -c1-16)-$extras"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return
    fi
    if [[ ! -x "$VENV/bin/python" ]]; then
        echo "setting up $VENV (first run: a few minutes)" >&2
        "$PY" -m venv "$VENV"
    fi
    # torch first and explicitly: an unpinned torch would pull the CUDA build.
    "$VENV/bin/pip" install -q torch==2.13.0
    "$VENV/bin/pip" install -q -e "$ROOT[$extras]"
    "$VENV/bin/pip" check >&2
    echo "$want" > "$stamp"
}

# anvil (a real external EVM node) from npm; its binary ships inside the
# platform package, so npm's blocked postinstall is not needed.
ensure_anvil() {
    local bin="$ROOT/.tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
    if [[ ! -x "$bin" ]]; then
        if command -v npm >/dev/null 2>&1; then
            npm install --prefix "$ROOT/.tools" --no-audit --no-fund --silent \
                @foundry-rs/anvil@1.7.1 >&2 || echo "npm could not install anvil" >&2
        else
            echo "npm not found: anvil tests will be skipped" >&2
        fi
    fi
    if [[ -x "$bin" ]]; then
        export FLOCKD_ANVIL="$bin"
    fi
}

# Debian's chromium and its driver, for the browser test of the web page; selenium is
# pointed at /usr/bin/chromedriver, so it never tries to download a browser of its own.
ensure_chromium() {
    if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
        return
    fi
    if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
        echo "installing Debian's chromium and chromium-driver (first run)" >&2
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq chromium chromium-driver; } >&2 \
            || echo "apt-get could not install chromium: browser tests will be skipped" >&2
    else
        echo "chromium not found: browser tests will be skipped" >&2
    fi
}
