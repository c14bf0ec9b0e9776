# shellcheck shell=bash
# Shared set-up for scripts/test, scripts/demo and scripts/test-in-container. Source it, then call
#   usertcp_venv [EXTRA]      create/refresh the venv and install the project (with [EXTRA] if given)
#   usertcp_system_tools      as root: apt-get install the command-line tools the integration tests use
#                             (non-zero when it cannot and CI=true, or when apt-get fails)
# It sets USERTCP_ROOT (the checkout) and USERTCP_VENV (the venv; override with the environment variable).

USERTCP_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
USERTCP_VENV=${USERTCP_VENV:-$USERTCP_ROOT/.venv}
export USERTCP_ROOT USERTCP_VENV

_usertcp_log() { printf 'usertcp: %s\n' "$*" >&2; }

# usertcp_venv [EXTRA]: idempotent; the pip step is skipped when the stamp in the venv records the same
# pyproject.toml (and a superset of the extras) as now.
usertcp_venv() {
    local extra=${1:-} py=$USERTCP_VENV/bin/python stamp=$USERTCP_VENV/.usertcp-installed want
    if ! "$py" -c '' 2>/dev/null; then
        if [ -n "$(ls -A "$USERTCP_VENV" 2>/dev/null)" ] && [ ! -f "$USERTCP_VENV/pyvenv.cfg" ]; then
            _usertcp_log "$USERTCP_VENV exists and is not a venv; move it away or set USERTCP_VENV"
            return 1
        fi
        _usertcp_log "creating venv $USERTCP_VENV"
        python3 -m venv --clear "$USERTCP_VENV" || return
    fi
    want=$(sha256sum < "$USERTCP_ROOT/pyproject.toml" | cut -d' ' -f1)
    # The stamp holds one line "HASH EXTRA" per installed variant; [test] also satisfies the plain install.
    if [ -f "$stamp" ] && grep -qxE "$want (${extra:-[a-z]*}|${extra:-})" "$stamp"; then
        return 0
    fi
    _usertcp_log "installing usertcp${extra:+[$extra]} into $USERTCP_VENV"
    # pip's build chatter goes to a log, shown only if the install fails.
    local log=$USERTCP_VENV/.usertcp-pip.log
    if ! { "$py" -m pip install --disable-pip-version-check --upgrade pip &&
           "$py" -m pip install --disable-pip-version-check -e "$USERTCP_ROOT${extra:+[$extra]}"; } \
           >"$log" 2>&1; then
        cat "$log" >&2
        _usertcp_log "pip install failed (log: $log)"
        return 1
    fi
    { grep -s "^$want " "$stamp"; echo "$want $extra"; } | sort -u > "$stamp.new" && mv "$stamp.new" "$stamp"
}

# usertcp_ci: true when CI is set to true/1/yes (any case), as CI services set it.
usertcp_ci() {
    case "${CI:-}" in [Tt][Rr][Uu][Ee] | 1 | [Yy][Ee][Ss]) return 0 ;; *) return 1 ;; esac
}

# _usertcp_missing_tools: the Debian packages for whichever of curl, nc, nft, ip, getent, ping,
# setpriv, unshare, tcpdump, chromium are missing.
# nc must be the OpenBSD netcat (the tests use -N), so its absence or another flavour both count.
_usertcp_missing_tools() {
    local pkgs=()
    command -v curl >/dev/null || pkgs+=(curl)
    { command -v nc >/dev/null && nc -h 2>&1 | grep -qE '^[[:space:]]+-N[[:space:]]'; } ||
        pkgs+=(netcat-openbsd)
    command -v nft >/dev/null || pkgs+=(nftables)
    command -v ip >/dev/null || pkgs+=(iproute2)
    # test_run.py: getent (DNS inside the program), ping, setpriv and unshare (the rootless run)
    command -v getent >/dev/null || pkgs+=(libc-bin)
    command -v ping >/dev/null || pkgs+=(iputils-ping)
    { command -v setpriv >/dev/null && command -v unshare >/dev/null; } || pkgs+=(util-linux)
    # the ladder tests: tcpdump makes the captures, headless chromium looks at the HTML output
    command -v tcpdump >/dev/null || pkgs+=(tcpdump)
    command -v chromium >/dev/null || pkgs+=(chromium fonts-dejavu-core)
    echo "${pkgs[*]}"
}

# _usertcp_cannot_install WHY: under CI an error (returns 1), else a warning (returns 0).
_usertcp_cannot_install() {
    if usertcp_ci; then
        _usertcp_log "error: $*; CI=true needs every tool the integration tests use"
        return 1
    fi
    _usertcp_log "warning: $*; the integration tests that need them will fail or be skipped"
}

# usertcp_system_tools: install (as root, with apt-get) the Debian packages for any missing curl,
# nc, nft, ip, getent, ping, setpriv, unshare. When that cannot be done (not root, no apt-get) it
# warns, or under CI fails; a failing apt-get, or a tool still missing after it, always fails.
usertcp_system_tools() {
    local missing
    missing=$(_usertcp_missing_tools)
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" != 0 ]; then
        _usertcp_cannot_install "missing $missing, and not root to apt-get install them"
        return
    fi
    if ! command -v apt-get >/dev/null; then
        _usertcp_cannot_install "missing $missing, and no apt-get to install them"
        return
    fi
    _usertcp_log "apt-get install $missing"
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086 # one word per package
    if ! apt-get update -qq >/dev/null || ! apt-get install -y -qq --no-install-recommends \
            $missing >/dev/null; then
        _usertcp_log "error: apt-get could not install $missing"
        return 1
    fi
    missing=$(_usertcp_missing_tools)
    if [ -n "$missing" ]; then
        _usertcp_log "error: still missing after apt-get install: $missing"
        return 1
    fi
}
