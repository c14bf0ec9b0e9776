# shellcheck shell=bash
# Shared set-up for scripts/test, scripts/demo and scripts/test-in-container. Source it, then call
#   usertcp_venv [EXTRA]      create/refresh the venv and install the project (with [EXTRA] if given)
#   usertcp_system_tools      as root: apt-get install the command-line tools the integration tests use
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

# usertcp_system_tools: as root, install the Debian packages for any missing curl, nc, nft, ip.
# nc must be the OpenBSD netcat (the tests use -N), so its absence or another flavour both count as missing.
usertcp_system_tools() {
    [ "$(id -u)" = 0 ] || return 0
    command -v apt-get >/dev/null || return 0
    local pkgs=()
    command -v curl >/dev/null || pkgs+=(curl)
    { command -v nc >/dev/null && nc -h 2>&1 | grep -qE '^[[:space:]]+-N[[:space:]]'; } || pkgs+=(netcat-openbsd)
    command -v nft >/dev/null || pkgs+=(nftables)
    command -v ip >/dev/null || pkgs+=(iproute2)
    [ ${#pkgs[@]} -eq 0 ] && return 0
    _usertcp_log "apt-get install ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || return
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null || return
}
