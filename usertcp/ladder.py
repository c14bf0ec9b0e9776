"""Watch one TCP conversation through a device and draw it as a ladder diagram.

Three small pieces for `usertcp demo` (and for anyone debugging a handshake):

- `kernel_tcp_state`: the Linux kernel's state of one socket, read from
  /proc/net/tcp and named as in RFC 9293;
- `PacketRecorder`: a middleware device (the `phy.Device` interface) that
  records every packet of one connection with its direction and time, and the
  state of both ends right after the packet was handled;
- `Ladder`: renders those records as a textbook time-sequence drawing, two
  vertical lines and one arrow per packet.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from .phy.base import Device
from .wire.errors import MalformedPacket
from .wire.packet import parse_packet
from .wire.tcp import ACK, CWR, ECE, FIN, PSH, RST, SYN, URG, Segment

# Kernel states that the next ACK from usertcp ends.
_WAITING_FOR_ACK = frozenset({"SYN-SENT", "SYN-RECEIVED", "FIN-WAIT-1", "CLOSING", "LAST-ACK"})

KERNEL_TO_STACK = "kernel->usertcp"
STACK_TO_KERNEL = "usertcp->kernel"

# /proc/net/tcp `st` column (include/net/tcp_states.h) -> RFC 9293 names.
KERNEL_STATES = {
    0x01: "ESTABLISHED",
    0x02: "SYN-SENT",
    0x03: "SYN-RECEIVED",
    0x04: "FIN-WAIT-1",
    0x05: "FIN-WAIT-2",
    0x06: "TIME-WAIT",
    0x07: "CLOSED",  # TCP_CLOSE
    0x08: "CLOSE-WAIT",
    0x09: "LAST-ACK",
    0x0A: "LISTEN",
    0x0B: "CLOSING",
    0x0C: "SYN-RECEIVED",  # TCP_NEW_SYN_RECV: a request socket
}


def _proc_endpoint(address: str, port: int) -> str:
    # The kernel prints the address as the host-order view of each network-order
    # 32-bit word (so 10.7.0.1 is 0100070A on x86; an IPv6 address is four such
    # words), and the port as a plain number.
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    raw = socket.inet_pton(family, address)
    words = "".join(f"{int.from_bytes(raw[i:i + 4], sys.byteorder):08X}"
                    for i in range(0, len(raw), 4))
    return f"{words}:{port:04X}"


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def kernel_tcp_state(local: tuple[str, int], remote: tuple[str, int],
                     path: str | None = None) -> str:
    """RFC name of the kernel socket `local` <-> `remote`; CLOSED when there is none.

    /proc/net/tcp (tcp6 for IPv6) shows the sockets of the reader's network namespace.
    """
    if path is None:
        path = "/proc/net/tcp6" if ":" in local[0] else "/proc/net/tcp"
    want_local, want_remote = _proc_endpoint(*local), _proc_endpoint(*remote)
    with open(path) as f:
        next(f, None)  # header
        for line in f:
            fields = line.split()
            if len(fields) > 3 and fields[1] == want_local and fields[2] == want_remote:
                code = int(fields[3], 16)
                return KERNEL_STATES.get(code, f"state {code:#04x}")
    return "CLOSED"


# ------------------------------------------------------------------ flags and numbers

_FLAG_WORDS = ((SYN, "SYN"), (FIN, "FIN"), (RST, "RST"), (PSH, "PSH"), (URG, "URG"),
               (ECE, "ECE"), (CWR, "CWR"), (ACK, "ACK"))


def flag_words(flags: int) -> str:
    """'SYN', 'SYN-ACK', 'PSH-ACK', 'FIN-ACK', ...; 'none' for no flags."""
    return "-".join(word for bit, word in _FLAG_WORDS if flags & bit) or "none"


def relative(value: int, isn: int | None) -> int | None:
    return None if isn is None else (value - isn) & 0xFFFFFFFF


def symbolic(value: int, isn: int | None, name: str) -> str:
    """`x`, `x+1`, `y+16`: a sequence number as textbooks write it."""
    rel = relative(value, isn)
    if rel is None:
        return "?"
    return name if rel == 0 else f"{name}+{rel}"


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"', "\\": "\\\\"}


def payload_text(data: bytes, limit: int = 40) -> str:
    """A short, safe, double-quoted rendering of a payload (UTF-8 where it decodes)."""
    text = bytes(data[:limit]).decode("utf-8", "surrogateescape")
    shown = "".join(
        _ESCAPES.get(ch) or (ch if ch.isprintable()
                             else f"\\x{ord(ch) & 0xFF:02x}" if ord(ch) <= 0xFF
                             or 0xDC80 <= ord(ch) <= 0xDCFF else f"\\u{ord(ch):04x}")
        for ch in text)
    return f'"{shown}"' + ("…" if len(data) > limit else "")


# ------------------------------------------------------------------ the recorder


@dataclass
class PacketRecord:
    """One packet of the conversation and both ends' states once it was handled."""

    number: int
    direction: str  # KERNEL_TO_STACK or STACK_TO_KERNEL
    time: float  # the recorder's clock (the event loop's, in the demo)
    size: int  # whole IPv4 packet
    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes
    options: list[str] = field(default_factory=list)
    wscale: int | None = None  # the window scale option, on a SYN
    kernel_state: str | None = None
    stack_state: str | None = None

    @property
    def complete(self) -> bool:
        return self.kernel_state is not None and self.stack_state is not None


def _options(seg: Segment) -> list[str]:
    out = []
    if seg.mss is not None:
        out.append(f"mss {seg.mss}")
    if seg.sack_permitted:
        out.append("sackOK")
    if seg.ts_val is not None:
        out.append("TS")
    if seg.wscale is not None:
        out.append(f"wscale {seg.wscale}")
    return out


class PacketRecorder:
    """Middleware device: records the TCP packets between the kernel and one port.

    Each received packet is handed to the driver alone (so its effect on the
    engine can be seen before the next one); its usertcp state is sampled just
    before the driver next sends, or on the next loop iteration, whichever is
    first. Each sent packet is written alone and the kernel's state is sampled
    right after the write (waiting at most `settle` seconds for /proc/net/tcp to
    change). Packets of other flows pass through unrecorded and are counted.
    """

    def __init__(self, inner: Device, *, kernel_address: str, stack_address: str,
                 stack_port: int, on_record: Callable[[PacketRecord], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, settle: float = 0.02) -> None:
        self.inner = inner
        self.kernel_address = kernel_address
        self.stack_address = stack_address
        self.stack_port = stack_port
        self.kernel_port: int | None = None
        self.records: list[PacketRecord] = []
        self.other_packets = 0
        self.on_record = on_record
        self.clock = clock
        self.settle = settle
        self._stack = None
        self._loop = None
        self._pending: list[PacketRecord] = []  # received, usertcp state not yet sampled
        self._emitted = 0
        self._seen_connection = False
        self.srtt: float | None = None  # usertcp's smoothed RTT, last seen
        self.proc_reads = 0  # looks at /proc/net/tcp, and the time they took:
        self.proc_read_time = 0.0  # they sit inside the times between packets

    def attach(self, stack) -> None:
        """Give the recorder the `aio.Stack` whose engine state it samples."""
        self._stack = stack
        self._loop = stack.loop

    # ---------------------------------------------------------- states

    def stack_state(self) -> str:
        stack = self._stack
        if stack is None:
            return "?"
        listening = False
        for row in stack.connections():
            if row["local"][1] != self.stack_port:
                continue
            if row["conn_id"] is None:
                listening = True
            elif row["remote"] == (self.kernel_address, self.kernel_port):
                self._seen_connection = True
                if row.get("srtt") is not None:
                    self.srtt = row["srtt"]
                return row["state"]
        if self._seen_connection or not listening:
            return "CLOSED"
        return "LISTEN"

    def kernel_state(self) -> str:
        if self.kernel_port is None:
            return "CLOSED"
        started = time.perf_counter()
        state = kernel_tcp_state((self.kernel_address, self.kernel_port),
                                 (self.stack_address, self.stack_port))
        self.proc_reads += 1
        self.proc_read_time += time.perf_counter() - started
        return state

    def _last_kernel_state(self) -> str:
        for rec in reversed(self.records):
            if rec.kernel_state is not None:
                return rec.kernel_state
        return "CLOSED"

    # ---------------------------------------------------------- recording

    def _parse(self, packet: bytes, direction: str) -> PacketRecord | None:
        try:
            seg = parse_packet(packet, verify_checksum=False)
        except MalformedPacket:
            return None
        if not isinstance(seg, Segment):
            return None
        if direction == KERNEL_TO_STACK:
            kport, sport = seg.sport, seg.dport
        else:
            kport, sport = seg.dport, seg.sport
        if sport != self.stack_port:
            return None
        if self.kernel_port is None:
            if direction != KERNEL_TO_STACK or not seg.flags & SYN:
                return None
            self.kernel_port = kport  # the first connection is the one we follow
        elif kport != self.kernel_port:
            return None
        rec = PacketRecord(len(self.records) + 1, direction, self.clock(), len(packet), seg.seq,
                           seg.ack, seg.flags, seg.window, bytes(seg.payload), _options(seg),
                           seg.wscale)
        self.records.append(rec)
        return rec

    def _complete_pending(self) -> None:
        if self._pending:
            state = self.stack_state()
            for rec in self._pending:
                rec.stack_state = state
            self._pending.clear()
            self._emit()

    def _emit(self) -> None:
        records = self.records
        while self._emitted < len(records) and records[self._emitted].complete:
            if self.on_record is not None:
                self.on_record(records[self._emitted])
            self._emitted += 1

    def flush(self) -> None:
        """Sample whatever is still pending and report every finished record."""
        self._complete_pending()

    # ---------------------------------------------------------- the Device interface

    @property
    def mtu(self) -> int:
        return self.inner.mtu

    def fileno(self) -> int | None:
        return self.inner.fileno()

    def receive_batch(self, max_packets: int = 64) -> list[bytes]:
        self._complete_pending()
        packets = self.inner.receive_batch(1)
        for packet in packets:
            rec = self._parse(packet, KERNEL_TO_STACK)
            if rec is None:
                self.other_packets += 1
                continue
            rec.kernel_state = self.kernel_state()  # it has sent this one already
            self._pending.append(rec)
            if self._loop is not None:
                self._loop.call_soon(self._complete_pending)
        return packets

    def send_batch(self, packets: list[bytes]) -> None:
        self._complete_pending()  # the engine has handled what came in before
        for packet in packets:
            rec = self._parse(packet, STACK_TO_KERNEL)
            if rec is None:
                self.other_packets += 1
                self.inner.send_batch([packet])
                continue
            rec.stack_state = self.stack_state()
            before = self._last_kernel_state()
            self.inner.send_batch([packet])
            rec.kernel_state = self._settled_kernel_state(before, rec)
            self._emit()

    def _settled_kernel_state(self, before: str, rec: PacketRecord) -> str:
        # A write to a TUN is normally handled by the kernel before write() returns.
        # Should it have been queued instead, give a packet that must change the
        # kernel's state (a SYN, FIN or RST, or the ACK a closing socket waits for)
        # a few milliseconds to do so; other packets get one look.
        state = self.kernel_state()
        expect_change = bool(rec.flags & (SYN | FIN | RST)) or before in _WAITING_FOR_ACK
        if state != before or not expect_change:
            return state
        deadline = time.monotonic() + self.settle
        pause = 0.0005
        while state == before and time.monotonic() < deadline:
            time.sleep(pause)
            pause = min(pause * 2, 0.005)
            state = self.kernel_state()
        return state

    def next_deadline(self) -> float | None:
        return self.inner.next_deadline()

    def close(self) -> None:
        self.inner.close()


# ------------------------------------------------------------------ drawing


class Style:
    """ANSI colours when wanted, plain text otherwise; Unicode glyphs when the stream takes them."""

    def __init__(self, color: bool, unicode: bool = True) -> None:
        self.color = color
        self.unicode = unicode
        if unicode:
            self.line, self.axis, self.right, self.left, self.dot = "─", "│", "▶", "◀", "·"
            self.full, self.empty, self.check = "█", "░", "✓"
            self.to, self.back, self.times, self.both = "→", "←", "×", "⇄"
        else:
            self.line, self.axis, self.right, self.left, self.dot = "-", "|", ">", "<", "-"
            self.full, self.empty, self.check = "#", ".", "ok"
            self.to, self.back, self.times, self.both = "->", "<-", "x", "<->"

    def _sgr(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color and text else text

    def bold(self, t: str) -> str:
        return self._sgr("1", t)

    def dim(self, t: str) -> str:
        return self._sgr("2", t)

    def cyan(self, t: str) -> str:
        return self._sgr("36", t)

    def magenta(self, t: str) -> str:
        return self._sgr("35", t)

    def green(self, t: str) -> str:
        return self._sgr("32", t)

    def yellow(self, t: str) -> str:
        return self._sgr("33", t)

    def red(self, t: str) -> str:
        return self._sgr("31", t)


def stream_takes_unicode(stream: TextIO) -> bool:
    encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
    return encoding in ("utf8", "utf_8")


STATE_COLORS = {
    "ESTABLISHED": "green",
    "TIME-WAIT": "yellow",
    "CLOSED": "red",
}


class Ladder:
    """Prints records as rows of a time-sequence diagram.

        ms        kernel 10.7.0.1:41234                        usertcp 10.7.0.2:7
                     CLOSED │                                  │ LISTEN
       0.0         SYN-SENT │── SYN  seq=0 ──────────────────▶ │ SYN-RECEIVED
    """

    TIME_W = 9
    STATE_W = 12
    LANE_W = 50

    def __init__(self, out: Callable[[str], None], style: Style, *,
                 kernel: tuple[str, int], stack: tuple[str, int]) -> None:
        self.out = out
        self.s = style
        self.kernel = kernel
        self.stack = stack
        self.isn: dict[str, int] = {}  # direction -> ISN of the side that sends that way
        self.wscale: dict[str, int | None] = {}  # direction -> window scale its SYN offered
        self.t0: float | None = None
        self._kernel_state = "CLOSED"
        self._stack_state = "LISTEN"

    # ---------------------------------------------------------- layout helpers

    def _row(self, time_col: str, kstate: str, lane: str, sstate: str) -> str:
        s = self.s
        return f"{time_col}  {kstate} {s.dim(s.axis)}{lane}{s.dim(s.axis)} {sstate}".rstrip()

    def _state(self, name: str, previous: str, right_align: bool) -> str:
        text = name.rjust(self.STATE_W) if right_align else name
        if name == previous:
            return self.s.dim(text)
        color = STATE_COLORS.get(name)
        text = self.s.bold(text)
        return getattr(self.s, color)(text) if color else text

    def _blank_state(self) -> str:
        return " " * self.STATE_W

    def _detail(self, text: str, plain: bool = False) -> None:
        text = text[: self.LANE_W - 4]
        lane = "   " + (text if plain else self.s.dim(text)) + " " * (self.LANE_W - 3 - len(text))
        self.out(self._row(" " * self.TIME_W, self._blank_state(), lane, ""))

    def header(self) -> None:
        """Column titles centred over the two axes, then the states before the first packet."""
        s = self.s
        kernel_axis = self.TIME_W + 2 + self.STATE_W + 1
        stack_axis = kernel_axis + 1 + self.LANE_W
        kernel = f"kernel {_hostport(*self.kernel)}"
        stack = f"usertcp {_hostport(*self.stack)}"
        k_start = kernel_axis - len(kernel) // 2
        s_start = stack_axis - len(stack) // 2
        self.out(" " * k_start + s.bold(kernel)
                 + " " * (s_start - k_start - len(kernel)) + s.bold(stack))
        self.out(self._row(s.dim("ms".rjust(self.TIME_W)),
                           self._state(self._kernel_state, "", True),
                           " " * self.LANE_W, self._state(self._stack_state, "", False)))

    def _window(self, rec: PacketRecord) -> str:
        # RFC 7323: scaling applies once both SYNs offered it, never to a SYN itself.
        shift = None
        if not rec.flags & SYN and len(self.wscale) == 2 and None not in self.wscale.values():
            shift = self.wscale[rec.direction]
        return _window_text(rec.window, shift)

    def note(self, text: str, *, beside_kernel: bool) -> None:
        """An application's call (connect(), close(), ...), next to its side's axis."""
        pad = " " * max(self.LANE_W - len(text) - 2, 0)
        text = self.s.yellow(text)
        lane = f"  {text}{pad}" if beside_kernel else f"{pad}{text}  "
        self.out(self._row(" " * self.TIME_W, " " * self.STATE_W, lane, ""))

    # ---------------------------------------------------------- one packet

    def packet(self, rec: PacketRecord) -> None:
        s = self.s
        inbound = rec.direction == KERNEL_TO_STACK
        if rec.flags & SYN and rec.direction not in self.isn:
            self.isn[rec.direction] = rec.seq
            self.wscale[rec.direction] = rec.wscale
        if self.t0 is None:
            self.t0 = rec.time
        mine, theirs = ("x", "y") if inbound else ("y", "x")
        other = STACK_TO_KERNEL if inbound else KERNEL_TO_STACK
        seq_isn, ack_isn = self.isn.get(rec.direction), self.isn.get(other)

        label = [flag_words(rec.flags)]
        rel_seq = relative(rec.seq, seq_isn)
        label.append(f"seq={rel_seq if rel_seq is not None else rec.seq}")
        if rec.flags & ACK:
            rel_ack = relative(rec.ack, ack_isn)
            label.append(f"ack={rel_ack if rel_ack is not None else rec.ack}")
        if rec.payload:
            label.append(f"len={len(rec.payload)}")
        text = " " + "  ".join(label) + " "
        fill = self.LANE_W - 3 - len(text)
        if inbound:
            lane = s.line * 2 + text + s.line * fill + s.right
            lane = s.cyan(lane)
        else:
            lane = s.left + s.line * 2 + text + s.line * fill
            lane = s.magenta(lane)
        t_ms = (rec.time - self.t0) * 1000
        time_col = s.dim(f"{t_ms:{self.TIME_W}.1f}")
        self.out(self._row(time_col, self._state(rec.kernel_state, self._kernel_state, True),
                           lane, self._state(rec.stack_state, self._stack_state, False)))
        self._kernel_state, self._stack_state = rec.kernel_state, rec.stack_state

        numbers = f"seq {symbolic(rec.seq, seq_isn, mine)} = {rec.seq}"
        if rec.flags & ACK:
            numbers += f", ack {symbolic(rec.ack, ack_isn, theirs)} = {rec.ack}"
        self._detail(numbers)
        extra = [self._window(rec)] + rec.options
        self._detail(f" {s.dot} ".join(extra))
        if rec.payload:
            self._detail(f"{len(rec.payload)} bytes {payload_text(rec.payload, 30)}", plain=True)


def _window_text(window: int, shift: int | None) -> str:
    if not shift:
        return f"win {window}"
    return f"win {window << shift} ({window} << {shift})"


def fmt_duration(seconds: float, unicode: bool = True) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} {'µs' if unicode else 'us'}"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


__all__ = [
    "KERNEL_STATES",
    "KERNEL_TO_STACK",
    "STACK_TO_KERNEL",
    "Ladder",
    "PacketRecord",
    "PacketRecorder",
    "Style",
    "flag_words",
    "fmt_duration",
    "kernel_tcp_state",
    "payload_text",
    "stream_takes_unicode",
]
