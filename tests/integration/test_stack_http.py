"""`usertcp http --root DIR` with curl: a big download, Connection: close (stack closes first), keep-alive."""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

from usertcp.wire.tcp import ACK, FIN, RST, SYN

from .netns import NetNS
from .stackproc import STACK, by_connection, start_service, tcp_segments

MASK = 2**32 - 1


def www(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    (root / "small.txt").write_bytes(b"small file\n" * 100)
    (root / "other.txt").write_bytes(b"another file\n" * 50)
    return root


def curl(ns: NetNS, *args: str, timeout: float = 60):
    res = ns.run(["curl", "-sS", "--max-time", str(timeout), *args], capture_output=True,
                 timeout=timeout + 10)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    return res


def test_curl_downloads_twenty_megabytes(netns: NetNS, tmp_path: Path) -> None:
    root = www(tmp_path)
    data = os.urandom(20 * 1024 * 1024)
    (root / "big.bin").write_bytes(data)
    stack = start_service(netns, tmp_path, "http", "--root", str(root))
    out = tmp_path / "download.bin"
    curl(netns, "-o", str(out), f"http://{STACK}/big.bin")
    assert out.stat().st_size == len(data)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert stack.stop(signal.SIGINT) == 0, stack.text()


def test_connection_close_stack_closes_first(netns: NetNS, tmp_path: Path) -> None:
    root = www(tmp_path)
    pcap = tmp_path / "close.pcap"
    stack = start_service(netns, tmp_path, "http", "--root", str(root), "--pcap", str(pcap))
    res = curl(netns, "--http1.1", "-H", "Connection: close", f"http://{STACK}/small.txt")
    assert res.stdout == (root / "small.txt").read_bytes()
    # The stack sent the first FIN, so its side ends in TIME-WAIT (logged as a state change).
    stack.wait_for("tcp.state", lambda e: e["new"] == "TIME-WAIT", timeout=10)
    assert stack.stop(signal.SIGINT) == 0, stack.text()

    conns = by_connection(tcp_segments(pcap))
    assert len(conns) == 1, conns
    segs = next(iter(conns.values()))
    assert not any(c.seg.flags & RST for c in segs), segs
    fins = [c for c in segs if c.seg.flags & FIN]
    assert fins and fins[0].from_stack, f"the stack's FIN must come first: {segs}"
    stack_fin = fins[0].seg
    x = (stack_fin.seq + len(stack_fin.payload)) & MASK  # the FIN's own sequence number
    after = segs[segs.index(fins[0]) + 1:]

    # kernel ACK of the stack's FIN (a pure ACK, or piggybacked on the kernel's FIN)
    kernel_ack = next(c for c in after if not c.from_stack and c.seg.flags & ACK
                      and c.seg.ack == (x + 1) & MASK)
    # kernel FIN, acknowledging the stack's FIN
    kernel_fin = next(c for c in after if not c.from_stack and c.seg.flags & FIN)
    assert kernel_fin.seg.ack == (x + 1) & MASK
    assert after.index(kernel_ack) <= after.index(kernel_fin)
    y = (kernel_fin.seg.seq + len(kernel_fin.seg.payload)) & MASK
    # The kernel sent no data after the request: its FIN sits where the stack's FIN said it would.
    assert y == stack_fin.ack
    # stack ACK of the kernel's FIN, from the sequence number after its own FIN
    last = after[after.index(kernel_fin) + 1:]
    stack_ack = next(c for c in last if c.from_stack)
    assert stack_ack.seg.flags & (ACK | FIN | SYN | RST) == ACK
    assert stack_ack.seg.seq == (x + 1) & MASK
    assert stack_ack.seg.ack == (y + 1) & MASK


def test_keep_alive_reuses_one_connection(netns: NetNS, tmp_path: Path) -> None:
    root = www(tmp_path)
    pcap = tmp_path / "keepalive.pcap"
    stack = start_service(netns, tmp_path, "http", "--root", str(root), "--pcap", str(pcap))
    res = curl(netns, "-v", "--http1.1", f"http://{STACK}/small.txt", f"http://{STACK}/other.txt")
    assert res.stdout == (root / "small.txt").read_bytes() + (root / "other.txt").read_bytes()
    assert b"re-using existing connection" in res.stderr.lower(), res.stderr.decode()
    assert stack.stop(signal.SIGINT) == 0, stack.text()

    segs = tcp_segments(pcap)
    syns = [c for c in segs if c.seg.flags & SYN and not c.seg.flags & ACK]
    assert len(syns) == 1, syns
    requests = [c for c in segs if not c.from_stack and bytes(c.seg.payload).startswith(b"GET ")]
    assert len(requests) == 2
