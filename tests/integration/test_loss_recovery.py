"""A single lost tail costs a probe, not a timeout: RACK-TLP (RFC 8985) with the kernel as peer.

nftables in the namespace drops exactly one packet the stack sends: the echo of a short message,
which is the whole flight, or the stack's FIN. (`quota until N bytes` matches while the bytes it
has seen, this packet's included, stay within N: with N the packet's length, the first only.)
Nothing is sent after either, so no SACK can reveal the loss: without a tail loss probe the
retransmission timer (200 ms at least) would resend it. The service's counters (SIGUSR1) must
show the probe and no RTO, and the conversation must end cleanly.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from .netns import NetNS
from .stackproc import STACK, start_service
from .test_robust_loss import assert_recovered, wait_closed

# Send a short message, read its echo, half-close, read to EOF; bounded by a deadline.
CLIENT = r"""
import json, socket, sys, time
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = bytes(range(256)) * (size // 256) + bytes(size % 256)
t0 = time.monotonic()
s = socket.create_connection((host, port), timeout=10)
port_used = s.getsockname()[1]
s.sendall(data)
got = b""
while len(got) < size:
    chunk = s.recv(65536)
    if not chunk:
        break
    got += chunk
echoed = time.monotonic() - t0
s.shutdown(socket.SHUT_WR)
eof = s.recv(1) == b""
s.close()
print(json.dumps({"intact": got == data, "eof": eof, "port": port_used,
                  "echo_seconds": echoed, "seconds": time.monotonic() - t0}))
"""

# The first packet of LENGTH bytes from the stack's port 7 that matches WHAT is dropped.
DROP_ONCE = """
table inet usertcp_tail {{
    chain input {{
        type filter hook input priority 0; policy accept;
        ip saddr {stack} tcp sport 7 ip length {length} {what} quota until {length} bytes \
            counter drop
    }}
}}
"""

# IP and TCP headers with the timestamps option both ends use: 20 + 20 + 12 bytes.
HEADERS = 52
CASES = {
    # the echo of the 100 bytes: the whole flight
    "data": (HEADERS + 100, ""),
    # the stack's FIN, alone, in LAST-ACK after the client's FIN
    "fin": (HEADERS, "tcp flags & fin == fin"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_lost_tail_costs_a_probe_not_a_timeout(netns: NetNS, tmp_path: Path, case: str) -> None:
    stack = start_service(netns, tmp_path, "echo", "--no-offload")
    netns.wait_port(STACK, 7)
    length, what = CASES[case]
    netns.run(["nft", "-f", "-"], input=DROP_ONCE.format(stack=STACK, length=length, what=what),
              text=True, check=True)
    res = netns.python(CLIENT, STACK, "7", "100", capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    rules = netns.run(["nft", "list", "table", "inet", "usertcp_tail"], capture_output=True,
                      text=True, check=True).stdout
    snap = wait_closed(stack, out["port"], timeout=15)
    why = f"{case}: {out}, counters {snap['counters']}, rules {rules}"
    print(why)
    assert "packets 1 " in rules, why  # exactly one packet was dropped
    assert out["intact"] and out["eof"], why
    counters = snap["counters"]
    assert counters.get("tlp_probes", 0) >= 1, why
    assert counters.get("rto_expired", 0) == 0, why
    assert counters.get("retransmits", 0) >= 1, why
    assert_recovered(stack, snap, out["port"], why)
    assert stack.stop(signal.SIGINT) == 0, stack.text()[-3000:]
