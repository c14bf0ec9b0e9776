"""What the capture reader, the observer, the renderers and the live tracer share.

A `Packet` is one TCP segment as a capture file or a device saw it. The observer
turns the packets of one connection into a `Conversation`: one `Row` per packet
with relative numbers, both sides' RFC 9293 states after it, and anomaly marks.
Renderers (text, SVG, HTML, Mermaid) draw a Conversation and know nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..tcp.state import State

# RFC 9293's names as text, the engine's own spelling (usertcp.tcp.state).
CLOSED, LISTEN, SYN_SENT, SYN_RECEIVED, ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, CLOSE_WAIT, CLOSING, \
    LAST_ACK, TIME_WAIT = STATES = tuple(str(state) for state in State)

# Anomaly marks on a row (Row.marks), in the order renderers show them.
RETRANSMISSION = "retransmission"  # this sequence space was seen from this side before
LOST = "lost"  # seen here, but the receiver evidently never got it
ACKED_UNSEEN = "acked-unseen"  # acknowledges data this capture never showed
PREVIOUS_NOT_CAPTURED = "previous-not-captured"  # starts beyond what this side was seen to send
DUP_ACK = "dup-ack"  # the same ACK again while the other side has data outstanding
KEEP_ALIVE = "keep-alive"  # seq one below what was sent, at most one byte
ZERO_WINDOW = "zero-window"  # advertises no room at all
RESET = "reset"  # RST
MARKS = (RETRANSMISSION, LOST, ACKED_UNSEEN, PREVIOUS_NOT_CAPTURED, DUP_ACK, KEEP_ALIVE,
         ZERO_WINDOW, RESET)

LEFT, RIGHT = 0, 1  # Row.sender: the side that sent the packet


@dataclass(frozen=True, slots=True)
class Packet:
    """One TCP segment, as captured. Addresses are text ("10.7.0.1", "fd00:7::1")."""

    time: float  # seconds: the capture's timestamps, or the event loop's clock live
    src: str
    sport: int
    dst: str
    dport: int
    seq: int
    ack: int
    flags: int  # usertcp.wire.tcp's SYN, ACK, FIN, RST, PSH, URG, ECE, CWR bits
    window: int  # the raw 16-bit field, unscaled
    length: int  # TCP payload bytes, from the IP header (right even for a truncated capture)
    payload: bytes = b""  # what the capture holds of the payload: may be shorter than length
    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    ts_val: int | None = None
    ts_ecr: int | None = None
    sack: tuple[tuple[int, int], ...] = ()  # absolute (left, right) edges
    size: int = 0  # the whole IP packet's length
    number: int = 0  # 1-based frame number in the capture (0 when live)
    ip_version: int = 4

    @property
    def source(self) -> tuple[str, int]:
        return (self.src, self.sport)

    @property
    def destination(self) -> tuple[str, int]:
        return (self.dst, self.dport)

    @property
    def seq_space(self) -> int:
        """Sequence numbers the segment occupies: its payload, plus one each for SYN and FIN."""
        from ..wire.tcp import FIN, SYN

        return self.length + (1 if self.flags & SYN else 0) + (1 if self.flags & FIN else 0)


@dataclass(slots=True)
class Row:
    """One packet of a conversation as a ladder shows it."""

    packet: Packet
    index: int  # 1-based within the conversation
    sender: int  # LEFT or RIGHT
    time: float  # seconds since the conversation's first packet
    rel_seq: int | None  # seq - the sender's ISN (None when that is unknown)
    rel_ack: int | None  # ack - the receiver's ISN (None without ACK, or unknown)
    window: int  # the advertised window in bytes (scaled once both SYNs offered scaling)
    window_shift: int | None  # the scale applied to `window`, None when not scaled
    states: tuple[str, str]  # (left, right) right after this packet
    marks: tuple[str, ...] = ()
    delivered: bool = True  # False: the observer inferred that it never reached the receiver
    why: str = ""  # one short sentence explaining the marks or a state change, may be empty
    sack: tuple[tuple[int, int], ...] = ()  # SACK blocks relative to the receiver's ISN

    @property
    def options(self) -> list[str]:
        """'mss 1460', 'sackOK', 'TS', 'wscale 7': the options worth showing."""
        p = self.packet
        out = []
        if p.mss is not None:
            out.append(f"mss {p.mss}")
        if p.sack_permitted:
            out.append("sackOK")
        if p.ts_val is not None:
            out.append("TS")
        if p.wscale is not None:
            out.append(f"wscale {p.wscale}")
        if self.sack:
            out.append("SACK " + " ".join(f"{a}-{b}" for a, b in self.sack))
        return out


@dataclass(slots=True)
class Conversation:
    """One TCP connection: both endpoints, the rows, and what came before the first row."""

    endpoints: tuple[tuple[str, int], tuple[str, int]]  # (left, right): left opened it
    names: tuple[str, str] = ("client", "server")  # what the drawing calls each side
    initial: tuple[str, str] = (CLOSED, LISTEN)  # states before the first row
    rows: list[Row] = field(default_factory=list)
    isn: tuple[int | None, int | None] = (None, None)  # (left, right) initial sequence numbers
    complete: bool = True  # False when the capture began after the SYN (no ISNs seen)

    def label(self, side: int) -> str:
        """'client 10.0.0.1:40000', 'server [fd00::2]:80'."""
        host, port = self.endpoints[side]
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return f"{self.names[side]} {where}"
