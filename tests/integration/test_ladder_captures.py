"""`usertcp ladder` on kernel-to-kernel captures of the textbook's cases, checked row by row.

Each scenario runs two Linux TCP stacks (namespaces a and b, kernel_pair.py) with ordinary
sockets, records a's veth with tcpdump, and drops one chosen packet with nftables where the case
needs it. Then both the command's text output and the Python API (read_capture, split, observe)
must give exactly the expected rows: direction, flags, relative seq/ack, length, both sides'
RFC 9293 states after the packet, and the anomaly marks. The expectations say what the kernels
did (RFC 9293's states as the capture shows them), not what the observer happens to print.

Each step waits PAUSE so that Linux's delayed ACKs fire on their own (<= 40 ms here) instead of
riding on the next segment: every capture has the same packets on every run.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from usertcp.ladder.capture import read_capture, tcp_packets
from usertcp.ladder.conversations import split
from usertcp.ladder.model import (
    CLOSE_WAIT,
    CLOSED,
    CLOSING,
    ESTABLISHED,
    FIN_WAIT_1,
    FIN_WAIT_2,
    LAST_ACK,
    LEFT,
    LISTEN,
    LOST,
    RESET,
    RETRANSMISSION,
    RIGHT,
    SYN_RECEIVED,
    SYN_SENT,
    TIME_WAIT,
)
from usertcp.ladder.observer import observe
from usertcp.wire.tcp import ACK, CWR, ECE, FIN, PSH, RST, SYN, URG

from .kernel_pair import ANY_FIN, PURE_ACK, SYN_ACK, SYN_ONLY, KernelPair, wait_for_tick

PORT = 5000
CLOSED_PORT = 5001
PAUSE = 0.15  # seconds between steps: longer than Linux's delayed ACK (40 ms at most)
RTO_WAIT = 0.6  # covers one retransmission timeout (200 ms minimum RTO plus the srtt)
FAMILIES = [pytest.param(socket.AF_INET, id="ipv4"), pytest.param(socket.AF_INET6, id="ipv6")]

L, R = LEFT, RIGHT
EST, FW1, FW2, CW, LA, TW = ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, CLOSE_WAIT, LAST_ACK, TIME_WAIT

# One expected row: sender, flags, rel seq, rel ack (None without ACK), payload length,
# (left state, right state) after the packet, marks.
Expected = tuple[int, str, int, int | None, int, tuple[str, str], tuple[str, ...]]


def row(sender: int, flags: str, seq: int, ack: int | None, states: tuple[str, str], *,
        length: int = 0, marks: tuple[str, ...] = ()) -> Expected:
    return (sender, flags, seq, ack, length, states, marks)


HANDSHAKE = [
    row(L, "SYN", 0, None, (SYN_SENT, SYN_RECEIVED)),
    row(R, "SYN-ACK", 0, 1, (EST, SYN_RECEIVED)),
    row(L, "ACK", 1, 1, (EST, EST)),
]


# -- the scenarios: what the two kernels are made to do ------------------------------------------

def pause(seconds: float = PAUSE) -> None:
    time.sleep(seconds)


def open_connection(pair: KernelPair, family: int) -> tuple[socket.socket, socket.socket]:
    """a connects to b's PORT: (a's socket, b's accepted socket), the handshake over."""
    listener = pair.listen("b", family, PORT)
    client = pair.connect("a", family, PORT)
    server = pair.accept(listener)
    pause()
    return client, server


def normal(pair: KernelPair, family: int) -> None:
    """A request, a reply, and the client closes first."""
    client, server = open_connection(pair, family)
    client.sendall(b"hello")
    assert server.recv(100) == b"hello"
    pause()
    server.sendall(b"world!")
    assert client.recv(100) == b"world!"
    pause()
    client.close()
    pause()
    assert server.recv(100) == b""
    server.close()
    pause()


NORMAL = [
    *HANDSHAKE,
    row(L, "PSH-ACK", 1, 1, (EST, EST), length=5),
    row(R, "ACK", 1, 6, (EST, EST)),
    row(R, "PSH-ACK", 1, 6, (EST, EST), length=6),
    row(L, "ACK", 6, 7, (EST, EST)),
    row(L, "FIN-ACK", 6, 7, (FW1, CW)),
    row(R, "ACK", 7, 7, (FW2, CW)),
    row(R, "FIN-ACK", 7, 7, (TW, LA)),
    row(L, "ACK", 7, 8, (TW, CLOSED)),
]


def close_losing_final_ack(pair: KernelPair, family: int, drop_at: str) -> None:
    """The client closes; its ACK of the server's FIN is dropped, so the server sends its FIN
    again, and the client, in TIME-WAIT, acknowledges it again."""
    client, server = open_connection(pair, family)
    client.close()
    pause()
    assert server.recv(100) == b""
    if drop_at == "receiver":  # at b's input: a's capture shows the ACK
        pair.drop_first("b", "input", PURE_ACK)
    else:  # at a's output: it never reaches the wire
        pair.drop_first("a", "output", PURE_ACK)
    server.close()
    pause(RTO_WAIT)


def lost_final_ack(pair: KernelPair, family: int) -> None:
    close_losing_final_ack(pair, family, "receiver")


def lost_final_ack_unseen(pair: KernelPair, family: int) -> None:
    close_losing_final_ack(pair, family, "sender")


CLOSE_TO_LAST_ACK = [
    *HANDSHAKE,
    row(L, "FIN-ACK", 1, 1, (FW1, CW)),
    row(R, "ACK", 1, 2, (FW2, CW)),
    row(R, "FIN-ACK", 1, 2, (TW, LA)),
]
LOST_FINAL_ACK = [
    *CLOSE_TO_LAST_ACK,
    row(L, "ACK", 2, 2, (TW, LA), marks=(LOST,)),
    row(R, "FIN-ACK", 1, 2, (TW, LA), marks=(RETRANSMISSION,)),
    row(L, "ACK", 2, 2, (TW, CLOSED)),
]
# Without the ACK in the capture, nothing shows the server's first FIN arrived: it was sent
# again before the client answered, so the observer takes that first copy as lost.
LOST_FINAL_ACK_UNSEEN = [
    *CLOSE_TO_LAST_ACK[:-1],
    row(R, "FIN-ACK", 1, 2, (FW2, LA), marks=(LOST,)),
    row(R, "FIN-ACK", 1, 2, (TW, LA), marks=(RETRANSMISSION,)),
    row(L, "ACK", 2, 2, (TW, CLOSED)),
]


def simultaneous_close(pair: KernelPair, family: int) -> None:
    """Both shut down at once. Each side's first FIN is dropped at the other's input, so both
    retransmit from the same timer tick; the copies cross, and each side receives the other's
    FIN while its own is unacknowledged: both go through CLOSING."""
    pair.drop_first("a", "input", ANY_FIN)
    pair.drop_first("b", "input", ANY_FIN)
    client, server = open_connection(pair, family)
    # Both retransmission timers are armed within microseconds: in one jiffy, so they expire
    # in the same tick and both FINs are on the wire before either side receives one.
    wait_for_tick()
    client.shutdown(socket.SHUT_WR)
    server.shutdown(socket.SHUT_WR)
    pause(RTO_WAIT)


SIMULTANEOUS_CLOSE = [
    *HANDSHAKE,
    row(L, "FIN-ACK", 1, 1, (FW1, EST), marks=(LOST,)),
    row(R, "FIN-ACK", 1, 1, (FW1, FW1), marks=(LOST,)),
    # In flight when the server retransmits its FIN: delivered as both FINs cross.
    row(L, "FIN-ACK", 1, 1, (FW1, FW1), marks=(RETRANSMISSION,)),
    row(R, "FIN-ACK", 1, 1, (CLOSING, CLOSING), marks=(RETRANSMISSION,)),
    row(L, "ACK", 2, 2, (CLOSING, TW)),
    row(R, "ACK", 2, 2, (TW, TW)),
]


def refused(pair: KernelPair, family: int) -> None:
    """A SYN to a port nobody listens on: the kernel answers RST-ACK."""
    client = pair.socket("a", family)
    with pytest.raises(ConnectionRefusedError):
        client.connect((pair.address("b", family), CLOSED_PORT))
    pause()


REFUSED = [
    row(L, "SYN", 0, None, (SYN_SENT, CLOSED)),
    row(R, "RST-ACK", 0, 1, (CLOSED, CLOSED), marks=(RESET,)),
]


def syn_ack_lost(pair: KernelPair, family: int) -> None:
    """The server's SYN-ACK is dropped at the client's input, and the server sends it again.

    Left alone, the client's SYN retransmission and the server's SYN-ACK retransmission both
    fire one second after the first exchange, in the same tick: which goes first is a race.
    So the client's very first SYN is dropped at its output (it never appears) and its backoff
    is exponential: the captured SYN is its first retransmission, the next would come 2 s
    later, and the server's SYN-ACK retransmission 1 s after the lost one wins by a second.
    """
    pair.sysctl("a", "net.ipv4.tcp_syn_linear_timeouts", 0)
    pair.drop_first("a", "output", SYN_ONLY)
    pair.drop_first("a", "input", SYN_ACK)
    open_connection(pair, family)


SYN_ACK_LOST = [
    row(L, "SYN", 0, None, (SYN_SENT, SYN_RECEIVED)),
    row(R, "SYN-ACK", 0, 1, (SYN_SENT, SYN_RECEIVED), marks=(LOST,)),
    row(R, "SYN-ACK", 0, 1, (EST, SYN_RECEIVED), marks=(RETRANSMISSION,)),
    row(L, "ACK", 1, 1, (EST, EST)),
]


def half_close(pair: KernelPair, family: int) -> None:
    """The client shuts down its sending side; the server still sends, then closes."""
    client, server = open_connection(pair, family)
    client.shutdown(socket.SHUT_WR)
    pause()
    assert server.recv(100) == b""
    server.sendall(b"late data")
    assert client.recv(100) == b"late data"
    pause()
    server.close()
    pause()


HALF_CLOSE = [
    *HANDSHAKE,
    row(L, "FIN-ACK", 1, 1, (FW1, CW)),
    row(R, "ACK", 1, 2, (FW2, CW)),
    row(R, "PSH-ACK", 1, 2, (FW2, CW), length=9),
    row(L, "ACK", 2, 10, (FW2, CW)),
    row(R, "FIN-ACK", 10, 2, (TW, LA)),
    row(L, "ACK", 2, 11, (TW, CLOSED)),
]

Scenario = Callable[[KernelPair, int], None]
SCENARIOS: dict[str, tuple[Scenario, list[Expected], tuple[str, str]]] = {
    "normal": (normal, NORMAL, (CLOSED, LISTEN)),
    "lost-final-ack": (lost_final_ack, LOST_FINAL_ACK, (CLOSED, LISTEN)),
    "lost-final-ack-unseen": (lost_final_ack_unseen, LOST_FINAL_ACK_UNSEEN, (CLOSED, LISTEN)),
    "simultaneous-close": (simultaneous_close, SIMULTANEOUS_CLOSE, (CLOSED, LISTEN)),
    "refused": (refused, REFUSED, (CLOSED, CLOSED)),
    "syn-ack-lost": (syn_ack_lost, SYN_ACK_LOST, (CLOSED, LISTEN)),
    "half-close": (half_close, HALF_CLOSE, (CLOSED, LISTEN)),
}


# -- reading the results -------------------------------------------------------------------------

# An arrow row of `usertcp ladder --format text`. A packet from the left starts "──" and ends
# "▶" (or "✕" when lost); one from the right starts "◀──" (or "✕──" when lost).
ROW = re.compile(
    r"^\s*(?P<ms>\d+\.\d)\s+(?P<left>[A-Z0-9-]+) │"
    r"(?P<head>◀──|\s*✕──|──) (?P<flags>[A-Z-]+)  seq=(?P<seq>\d+)(?:  ack=(?P<ack>\d+))?"
    r"(?:  len=(?P<len>\d+))?(?:  \[(?P<marks>[a-z, -]+)\])? ─*(?P<tail>▶|✕)?\s*│"
    r" (?P<right>[A-Z0-9-]+)$")
# The line above the first row: both sides' states before it.
INITIAL = re.compile(r"^\s*ms\s+(?P<left>[A-Z0-9-]+) │\s*│ (?P<right>[A-Z0-9-]+)$")

_FLAG_NAMES = ((SYN, "SYN"), (FIN, "FIN"), (RST, "RST"), (PSH, "PSH"), (URG, "URG"),
               (ECE, "ECE"), (CWR, "CWR"), (ACK, "ACK"))


def flag_text(flags: int) -> str:
    return "-".join(name for bit, name in _FLAG_NAMES if flags & bit)


def ladder_text(path: Path) -> tuple[tuple[str, str], list[Expected], list[bool]]:
    """`usertcp ladder FILE --format text` parsed: initial states, rows, and per row whether
    its arrow reached the receiver (no ✕)."""
    res = subprocess.run(
        [sys.executable, "-m", "usertcp", "ladder", str(path), "--format", "text",
         "--color", "never"], check=False, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    lines = res.stdout.splitlines()
    initial = [m for m in map(INITIAL.match, lines) if m]
    assert len(initial) == 1, res.stdout
    arrows = [line for line in lines if "  seq=" in line]
    rows, delivered = [], []
    for line in arrows:
        m = ROW.match(line)
        assert m, f"not a ladder row: {line!r}"
        sender = L if m["head"] == "──" else R
        rows.append(row(sender, m["flags"], int(m["seq"]),
                        None if m["ack"] is None else int(m["ack"]),
                        (m["left"], m["right"]), length=int(m["len"] or 0),
                        marks=tuple(m["marks"].split(", ")) if m["marks"] else ()))
        lost = "✕" in m["head"] or m["tail"] == "✕"
        # A delivered arrow has its head at the receiver.
        assert lost or (m["tail"] == "▶" if sender == L else m["head"] == "◀──"), line
        delivered.append(not lost)
    return (initial[0]["left"], initial[0]["right"]), rows, delivered


# -- the tests -----------------------------------------------------------------------------------

@pytest.fixture
def pair(_reap_stale_namespaces: None) -> Iterator[KernelPair]:
    with KernelPair.create() as kernels:
        yield kernels


NAMES = list(SCENARIOS)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", NAMES)
def test_ladder_of_kernel_capture(pair: KernelPair, tmp_path: Path, name: str,
                                  family: int) -> None:
    scenario, expected, initial = SCENARIOS[name]
    path = tmp_path / f"{name}.pcap"
    with pair.capture("a", path):
        scenario(pair, family)

    # The Python API.
    connections = split(tcp_packets(read_capture(path)))
    assert len(connections) == 1
    port = CLOSED_PORT if name == "refused" else PORT
    client_port = connections[0].packets[0].sport
    left = (pair.address("a", family), client_port)
    right = (pair.address("b", family), port)
    assert connections[0].endpoints == (left, right)
    conversation = observe(connections[0].packets)
    assert conversation.endpoints == (left, right)
    assert conversation.complete
    assert conversation.initial == initial
    got = [row(r.sender, flag_text(r.packet.flags), r.rel_seq, r.rel_ack, r.states,
               length=r.packet.length, marks=r.marks) for r in conversation.rows]
    assert got == expected
    assert [r.index for r in conversation.rows] == list(range(1, len(expected) + 1))
    assert [r.delivered for r in conversation.rows] == [LOST not in e[6] for e in expected]

    # The command.
    text_initial, text_rows, text_delivered = ladder_text(path)
    assert text_initial == initial
    assert text_rows == expected
    assert text_delivered == [LOST not in e[6] for e in expected]
