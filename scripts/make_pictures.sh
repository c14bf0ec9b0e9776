#!/usr/bin/env bash
# The README's pictures, made by usertcp's own commands (as root; everything runs in private
# network namespaces that this script and the commands create and delete).
#   scripts/make_pictures.sh [OUTDIR]     (default examples/pictures)
set -euo pipefail
# shellcheck source=scripts/_venv.sh
. "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
usertcp_venv ""
U=$USERTCP_VENV/bin/usertcp
PY=$USERTCP_VENV/bin/python
out=${1:-$USERTCP_ROOT/examples/pictures}
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# 1. The lost final ACK: the demo's scenario, captured at usertcp's device, drawn as SVG.
"$U" demo --scenario lost-final-ack --msl 1 --pcap "$tmp/lost-final-ack.pcap" > "$tmp/demo.txt"
"$U" ladder "$tmp/lost-final-ack.pcap" --names kernel,usertcp -o "$out/lost-final-ack.svg"

# 2. A lossy transfer: curl fetches 400 kB through `usertcp run`, which loses 3 % of what it
#    sends (seeded, so the picture is the same every time); the graph is of the server's data.
#    It all happens inside `unshare -n`: the HTTP server is that namespace's 127.0.0.1.
head -c 400000 /dev/zero | tr '\0' 'u' > "$tmp/file"
unshare -n -- sh -c '
    set -e
    ip link set lo up
    "$1" -m http.server 8000 --bind 127.0.0.1 --directory "$2" >/dev/null 2>&1 &
    server=$!
    trap "kill $server" EXIT
    for _ in $(seq 50); do "$1" -c "import socket; socket.create_connection((\"127.0.0.1\", 8000)).close()" 2>/dev/null && break; sleep 0.1; done
    "$3" run --mtu 1500 --no-offload --fault seed=11,loss=0.03,delay=0.01,direction=tx \
        --pcap "$2/lossy.pcap" -- curl -s -o /dev/null http://10.0.2.2:8000/file
' sh "$PY" "$tmp" "$U"
"$U" plot "$tmp/lossy.pcap" --port 8000 -o "$out/lossy-transfer.svg"
ls -l "$out"
