"""A SYN flood from spoofed sources through the TUN device (RFC 4987).

50,000 SYNs from addresses in 198.18.0.0/15 are injected with a packet socket on the TUN
interface while a kernel client keeps opening real connections. The stack's SYN-ACKs to the
spoofed sources go back into the kernel, which has no route for them (forwarding is off in the
namespace) and drops them: nothing leaves the namespace. When the SYN backlog is full the stack
answers with SYN cookies and keeps no state, so its connection table and memory stay bounded and
the real clients get through during and after the flood. That half-open entries expire after the
SYN-ACK retries is shown on the virtual clock in tests/stack/test_syn_flood.py (it takes 63 s).
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
from pathlib import Path

from .netns import NetNS
from .stackproc import STACK, start_service
from .test_robust_hostile import ETH_P_IP, SYN, Injector, snapshot, tcp_packet

FLOOD = 50_000
SYN_BACKLOG = 256  # TcpConfig.syn_backlog
RSS_BOUND_KB = 30 * 1024

# Real clients, one after another, for as long as the flood lasts (bounded): connect, echo, close.
CLIENTS = """\
import json, socket, sys, time
deadline = time.monotonic() + float(sys.argv[2])
ok, failed = 0, []
while time.monotonic() < deadline and ok + len(failed) < 2000:
    try:
        with socket.create_connection((sys.argv[1], 7), timeout=10) as s:
            s.sendall(b"ping")
            s.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := s.recv(100):
                got += chunk
        if got == b"ping":
            ok += 1
        else:
            failed.append(repr(got))
    except OSError as exc:
        failed.append(repr(exc))
    time.sleep(0.02)
print(json.dumps({"ok": ok, "failed": failed}))
"""


def test_syn_flood_from_spoofed_sources(netns: NetNS, tmp_path: Path) -> None:
    seed = int(os.environ.get("USERTCP_ROBUST_SEED", "4987"))
    print(f"\nseed {seed}")
    rng = random.Random(seed)
    stack = start_service(netns, tmp_path, "echo")
    netns.wait_port(STACK, 7)
    injector = Injector(netns)
    start = snapshot(stack)

    flood = []
    for _ in range(FLOOD):
        src = bytes((198, 18 + rng.randrange(2), rng.randrange(256), rng.randrange(1, 255)))
        flood.append((ETH_P_IP, bytes(tcp_packet(rng.randrange(1024, 65536), 7,
                                                 rng.randrange(1 << 32), 0, SYN, src=src))))
    clients = netns.popen([sys.executable, "-c", CLIENTS, STACK, "8"], stdout=-1, text=True)
    injector.send(flood)
    during = snapshot(stack)
    out, _ = clients.communicate(timeout=60)
    result = json.loads(out)
    after = snapshot(stack)

    counters = after["counters"]
    listener = next(r for r in after["table"] if r["state"] == "LISTEN")
    print(f"clients during the flood: {result['ok']} ok, {len(result['failed'])} failed; "
          f"cookies sent {counters.get('syn_cookies_sent', 0)}, "
          f"RSS {start['rss_kb']} -> {during['rss_kb']} -> {after['rss_kb']} KB, "
          f"half-open {listener['half_open']}")
    assert result["failed"] == [] and result["ok"] >= 20, result
    assert counters.get("syn_cookies_sent", 0) >= FLOOD - SYN_BACKLOG - 1000, counters
    # State is bounded by the SYN backlog, not by the flood: the table holds at most the
    # backlog's half-open entries (and a few real connections closing).
    for snap in (during, after):
        half_open = [r for r in snap["table"] if r["state"] == "SYN-RECEIVED"]
        assert len(half_open) <= SYN_BACKLOG, len(half_open)
        assert len(snap["table"]) <= SYN_BACKLOG + 100, len(snap["table"])
        assert snap["rss_kb"] - start["rss_kb"] < RSS_BOUND_KB, (start["rss_kb"], snap["rss_kb"])

    # After the flood: a fresh connection echoes as usual.
    with netns.enter():
        with socket.create_connection((STACK, 7), timeout=10) as s:
            s.sendall(b"after the flood")
            s.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := s.recv(100):
                got += chunk
    assert got == b"after the flood"
    assert stack.stop() == 0, stack.text()
