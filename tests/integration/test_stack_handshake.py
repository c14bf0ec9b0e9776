"""The kernel opens connections to `usertcp echo`: nc and a Python socket; the capture shows the ladder."""

from __future__ import annotations

import signal
from pathlib import Path

from usertcp.wire.tcp import ACK, SYN

from .netns import NetNS
from .stackproc import STACK, by_connection, start_service, tcp_segments

SOCKET_CLIENT = """\
import socket, sys
with socket.create_connection((sys.argv[1], 7), timeout=10) as s:
    print(s.getsockname()[1], flush=True)
    s.sendall(b"hello via a socket")
    s.shutdown(socket.SHUT_WR)
    got = b""
    while chunk := s.recv(100):
        got += chunk
    assert got == b"hello via a socket", got
"""


def test_nc_and_socket_handshake_in_capture(netns: NetNS, tmp_path: Path) -> None:
    pcap = tmp_path / "handshake.pcap"
    stack = start_service(netns, tmp_path, "echo", "--pcap", str(pcap))

    res = netns.run(
        ["nc", "-N", STACK, "7"], input="hello via nc\n", capture_output=True, text=True, timeout=15
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == "hello via nc\n"

    res = netns.python(SOCKET_CLIENT, STACK, capture_output=True, text=True, timeout=15)
    assert res.returncode == 0, res.stderr
    socket_port = int(res.stdout)

    # SIGINT (by PID) stops the service cleanly; the capture is complete once it has exited.
    assert stack.stop(signal.SIGINT) == 0, stack.text()

    conns = by_connection(tcp_segments(pcap))
    assert len(conns) == 2, conns
    assert socket_port in conns
    for port, segs in conns.items():
        syn, synack, ack = segs[0], segs[1], segs[2]
        assert not syn.from_stack and syn.seg.flags == SYN, segs[:3]
        assert syn.seg.mss is not None  # the kernel offers its MSS too
        isn = syn.seg.seq

        assert synack.from_stack and synack.seg.flags == SYN | ACK, (port, segs[:3])
        assert synack.seg.ack == (isn + 1) % 2**32
        assert synack.seg.mss == 1460  # MTU 1500 - 40
        assert synack.seg.dport == port and synack.seg.sport == 7

        assert not ack.from_stack and ack.seg.flags & (SYN | ACK) == ACK, segs[:3]
        assert ack.seg.seq == (isn + 1) % 2**32
        assert ack.seg.ack == (synack.seg.seq + 1) % 2**32
    # Each connection's SYN is the first segment the capture holds for it: no stray retransmits.
    assert all(sum(1 for c in segs if c.seg.flags & SYN and not c.from_stack) == 1
               for segs in conns.values())
