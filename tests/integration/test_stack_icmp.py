"""The stack answers ICMP echo: a ping from a raw socket (no iputils-ping needed)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from .netns import NetNS
from .stackproc import STACK, start_service

# One echo request (id, seq, payload) from a raw ICMP socket; wait (bounded) for the matching reply.
PING = """\
import json, os, socket, struct, sys, time

def checksum(b):
    if len(b) % 2:
        b += b"\\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF

dst, ident, seq = sys.argv[1], os.getpid() & 0xFFFF, 7
payload = b"usertcp ping payload " + os.urandom(16)
header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
packet = struct.pack("!BBHHH", 8, 0, checksum(header + payload), ident, seq) + payload
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(0.5)
deadline = time.monotonic() + 5
t0 = time.monotonic()
s.sendto(packet, (dst, 0))
while True:
    try:
        data, addr = s.recvfrom(65535)
    except TimeoutError:
        if time.monotonic() > deadline:
            sys.exit("no echo reply within 5 s")
        continue
    ihl = (data[0] & 15) * 4
    icmp = data[ihl:]
    kind, code, _, rid, rseq = struct.unpack_from("!BBHHH", icmp)
    if kind == 0 and rid == ident and rseq == seq and addr[0] == dst:
        print(json.dumps({"from": addr[0], "code": code, "payload_equal": icmp[8:] == payload,
                          "checksum_ok": checksum(icmp) == 0, "ttl": data[8],
                          "ms": (time.monotonic() - t0) * 1000}))
        break
"""


def test_ping_is_answered(netns: NetNS, tmp_path: Path) -> None:
    stack = start_service(netns, tmp_path, "echo")
    res = netns.python(PING, STACK, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    reply = json.loads(res.stdout)
    assert reply["from"] == STACK
    assert reply["code"] == 0
    assert reply["payload_equal"] and reply["checksum_ok"], reply
    assert stack.stop(signal.SIGINT) == 0, stack.text()
