"""The ladder as text: two vertical lines, one arrow per packet, both sides' states beside them.

    ms      client 10.0.0.1:40000                               server 10.0.0.2:80
             CLOSED │                                                  │ LISTEN
    0.0    SYN-SENT │── SYN  seq=0 ───────────────────────────────────▶│ SYN-RECEIVED
                    │   seq x = 1000                                   │
                    │   win 64240 · mss 1460 · sackOK · TS · wscale 7  │
    1.2    SYN-SENT │◀── RST-ACK  seq=0  ack=1  [reset] ───────────────│ CLOSED

The arrow line of a packet is, exactly:

    TIME  LEFT-STATE │ARROW│ RIGHT-STATE

- TIME: milliseconds since the first packet, one decimal, right-aligned in a column 9 wide
  (up to 9,999,999.9 ms). `render_text` widens the column to the longest time; a live ladder
  widens it from the first row that needs more.
- ARROW to the right: `── LABEL ───▶`, to the left: `◀── LABEL ───`, filling the lane.
  LABEL is `FLAGS  seq=N[  ack=N][  len=N][  [MARK, MARK]]`: seq and ack relative to the
  sender's and the receiver's ISN, absolute when that ISN is unknown; the marks are
  model.MARKS names in that order, inside one pair of brackets, comma-separated.
- A packet that never reached the receiver (Row.delivered False) ends in `✕` three cells short
  of the receiver's axis instead of an arrowhead on it.
- States: each side's state right after the packet, highlighted when it changed.

Below each arrow: the absolute numbers (`seq x+1 = 1001, ack y+1 = 5001`, x = left's ISN,
y = right's), window and options, a payload preview and the row's `why`. Text too long for the
lane is cut with `…`. Without Unicode the glyphs are ASCII (`-`, `|`, `>`, `<`, `x`, `...`).
"""

from __future__ import annotations

import textwrap
import unicodedata
from collections.abc import Callable
from typing import TextIO

from ..wire.tcp import ACK, CWR, ECE, FIN, PSH, RST, SYN, URG
from .model import LEFT, MARKS, RESET, RIGHT, Conversation, Row

# ------------------------------------------------------------------ flags and numbers

_FLAG_WORDS = ((SYN, "SYN"), (FIN, "FIN"), (RST, "RST"), (PSH, "PSH"), (URG, "URG"),
               (ECE, "ECE"), (CWR, "CWR"), (ACK, "ACK"))

WHY_LINES = 3  # the `why` text is wrapped onto at most this many detail lines


def flag_words(flags: int) -> str:
    """'SYN', 'SYN-ACK', 'PSH-ACK', 'FIN-ACK', ...; 'none' for no flags."""
    return "-".join(word for bit, word in _FLAG_WORDS if flags & bit) or "none"


def relative(value: int, isn: int | None) -> int | None:
    return None if isn is None else (value - isn) & 0xFFFFFFFF


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"', "\\": "\\\\"}


def payload_text(data: bytes, limit: int = 40, *, ascii: bool = False) -> str:
    """A short, safe, double-quoted rendering of a payload (UTF-8 where it decodes).

    `ascii`: escape everything outside printable ASCII too (for streams without Unicode).
    """
    text = bytes(data[:limit]).decode("utf-8", "surrogateescape")

    def shown(ch: str) -> str:
        if ch in _ESCAPES:
            return _ESCAPES[ch]
        if ch.isprintable() and (not ascii or ch.isascii()):
            return ch
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte
            return f"\\x{code & 0xFF:02x}"
        return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"

    more = ("..." if ascii else "…") if len(data) > limit else ""
    return '"' + "".join(shown(ch) for ch in text) + '"' + more


def fmt_duration(seconds: float, unicode: bool = True) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} {'µs' if unicode else 'us'}"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def ordered_marks(marks: tuple[str, ...]) -> list[str]:
    """The marks in model.MARKS order, unknown ones last."""
    rank = {mark: i for i, mark in enumerate(MARKS)}
    return sorted(dict.fromkeys(marks), key=lambda m: rank.get(m, len(MARKS)))


def numbers(row: Row, isn: tuple[int | None, int | None]) -> tuple[int | None, int | None]:
    """(rel seq, rel ack) of a row: the observer's, else from ISNs learnt since."""
    p = row.packet
    rel_seq = row.rel_seq if row.rel_seq is not None else relative(p.seq, isn[row.sender])
    rel_ack = None
    if p.flags & ACK:
        rel_ack = row.rel_ack if row.rel_ack is not None else relative(p.ack, isn[1 - row.sender])
    return rel_seq, rel_ack


def arrow_words(row: Row, isn: tuple[int | None, int | None], sep: str = "  ") -> str:
    """'PSH-ACK  seq=1  ack=1  len=15': relative numbers, absolute where the ISN is unknown."""
    p = row.packet
    rel_seq, rel_ack = numbers(row, isn)
    words = [flag_words(p.flags), f"seq={p.seq if rel_seq is None else rel_seq}"]
    if p.flags & ACK:
        words.append(f"ack={p.ack if rel_ack is None else rel_ack}")
    if p.length:
        words.append(f"len={p.length}")
    return sep.join(words)


def arrow_label(row: Row, isn: tuple[int | None, int | None]) -> tuple[str, str]:
    """(words, marks) of an arrow: 'SYN  seq=0', '  [lost, dup-ack]' (empty without marks)."""
    marks = ordered_marks(row.marks)
    return arrow_words(row, isn), (f"  [{', '.join(marks)}]" if marks else "")


def window_text(row: Row) -> str:
    if not row.window_shift:
        return f"win {row.window}"
    return f"win {row.window} ({row.packet.window} << {row.window_shift})"


# ------------------------------------------------------------------ terminal cells


def cells(text: str) -> int:
    """Terminal columns `text` takes: wide East Asian characters two, combining marks none."""
    width = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in "WF" else 1
    return width


def fit(text: str, width: int, ellipsis: str = "…") -> str:
    """`text` in at most `width` columns, cut with `ellipsis`; control characters become '?'
    (so that nothing from the network can reach the terminal as an escape sequence)."""
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    if cells(text) <= width:
        return text
    room = width - len(ellipsis)
    out, used = [], 0
    for ch in text:
        w = cells(ch)
        if used + w > room:
            break
        out.append(ch)
        used += w
    return "".join(out) + ellipsis if room >= 0 else ellipsis[:width]


def pad(text: str, width: int) -> str:
    return text + " " * max(width - cells(text), 0)


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
            self.cross, self.ellipsis = "✕", "…"
        else:
            self.line, self.axis, self.right, self.left, self.dot = "-", "|", ">", "<", "-"
            self.full, self.empty, self.check = "#", ".", "ok"
            self.to, self.back, self.times, self.both = "->", "<-", "x", "<->"
            self.cross, self.ellipsis = "x", "..."

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

TIME_W = 9  # "9999999.9": under three hours in ms
STATE_W = 12  # "SYN-RECEIVED"
LANE_W = 50  # between the axes
MAX_LANE_W = 90  # render_text widens the lane up to this for long labels
LOST_GAP = 3  # cells between a lost packet's ✕ and the receiver's axis


class TextLadder:
    """Prints rows of one conversation as a time-sequence diagram, one call per row (live or not)."""

    def __init__(self, out: Callable[[str], None], style: Style, *,
                 endpoints: tuple[tuple[str, int], tuple[str, int]], names: tuple[str, str],
                 initial: tuple[str, str], isn: tuple[int | None, int | None] = (None, None),
                 lane_width: int = LANE_W, time_width: int = TIME_W) -> None:
        self.out = out
        self.s = style
        self.endpoints = endpoints
        self.names = names
        self.isn = list(isn)
        self.states = list(initial)  # as last drawn
        self.lane_w = max(lane_width, 20)
        self.time_w = time_width

    # ---------------------------------------------------------- layout helpers

    def _emit(self, time_col: str, lstate: str, lane: str, rstate: str) -> None:
        s = self.s
        self.out(f"{time_col}  {lstate} {s.dim(s.axis)}{lane}{s.dim(s.axis)} {rstate}".rstrip())

    def _fit(self, text: str, width: int) -> str:
        if not self.s.unicode:
            text = text.encode("ascii", "replace").decode("ascii")
        return fit(text, width, self.s.ellipsis)

    def _state(self, name: str, previous: str, right_align: bool) -> str:
        name = self._fit(name, STATE_W)
        text = name.rjust(STATE_W) if right_align else name
        if name == previous:
            return self.s.dim(text)
        color = STATE_COLORS.get(name)
        text = self.s.bold(text)
        return getattr(self.s, color)(text) if color else text

    def _detail(self, text: str, paint: Callable[[str], str] | None = None) -> None:
        text = pad(self._fit(text, self.lane_w - 4), self.lane_w - 4)
        lane = "   " + (paint or self.s.dim)(text) + " "
        self._emit(" " * self.time_w, " " * STATE_W, lane, "")

    def _title(self, side: int) -> str:
        return f"{self.names[side]} {hostport(*self.endpoints[side])}"

    # ---------------------------------------------------------- the public calls

    def header(self) -> None:
        """Titles centred over the two axes, then the states before the first packet."""
        s = self.s
        left_axis = self.time_w + 2 + STATE_W + 1
        right_axis = left_axis + 1 + self.lane_w
        left, right = (self._fit(self._title(side), self.lane_w) for side in (LEFT, RIGHT))
        l_start = max(left_axis - cells(left) // 2, 0)
        r_start = max(right_axis - cells(right) // 2, l_start + cells(left) + 2)
        self.out(" " * l_start + s.bold(left) + " " * (r_start - l_start - cells(left))
                 + s.bold(right))
        self._emit(s.dim("ms".rjust(self.time_w)), self._state(self.states[LEFT], "", True),
                   " " * self.lane_w, self._state(self.states[RIGHT], "", False))

    def note(self, text: str, side: int) -> None:
        """An application's call (connect(), close(), ...), next to `side`'s axis."""
        text = self._fit(text, self.lane_w - 4)
        gap = " " * (self.lane_w - 2 - cells(text))
        text = self.s.yellow(text)
        lane = f"  {text}{gap}" if side == LEFT else f"{gap}{text}  "
        self._emit(" " * self.time_w, " " * STATE_W, lane, "")

    def set_isn(self, side: int, isn: int) -> None:
        """An ISN learnt live (from a SYN): later rows without relative numbers use it."""
        self.isn[side] = isn

    def row(self, row: Row) -> None:
        """One packet: its arrow line, then the detail lines."""
        s = self.s
        t_ms = f"{row.time * 1000:.1f}"
        self.time_w = max(self.time_w, len(t_ms))
        lstate, rstate = row.states
        self._emit(s.dim(t_ms.rjust(self.time_w)),
                   self._state(lstate, self.states[LEFT], True), self._arrow(row),
                   self._state(rstate, self.states[RIGHT], False))
        self.states = [lstate, rstate]
        for text, paint in self._details(row):
            self._detail(text, paint)

    # ---------------------------------------------------------- one packet

    def _arrow(self, row: Row) -> str:
        s = self.s
        to_right = row.sender == LEFT
        words, marks = arrow_label(row, tuple(self.isn))
        label = words + marks
        lost = not row.delivered
        gap = LOST_GAP if lost else 0
        # two lines before the label, a space either side of it, at least one line after
        room = self.lane_w - 2 - 2 - 1 - 1 - gap
        label = self._fit(label, room)
        fill = self.lane_w - 2 - len(label) - 2 - 1 - gap
        paint = s.cyan if to_right else s.magenta
        mark_paint = s.red if lost or RESET in row.marks else s.yellow
        body = (paint(" " + label[:len(words)]) + mark_paint(label[len(words):])
                + paint(" " + s.line * fill))
        if to_right:
            head = s.red(s.cross) if lost else paint(s.right)
            return paint(s.line * 2) + body + head + " " * gap
        head = s.red(s.cross) if lost else paint(s.left)
        return " " * gap + head + paint(s.line * 2) + body

    def _details(self, row: Row) -> list[tuple[str, Callable[[str], str] | None]]:
        s = self.s
        p = row.packet
        rel_seq, rel_ack = numbers(row, tuple(self.isn))
        mine, theirs = ("x", "y") if row.sender == LEFT else ("y", "x")
        text = _absolute("seq", p.seq, rel_seq, mine)
        if p.flags & ACK:
            text += ", " + _absolute("ack", p.ack, rel_ack, theirs)
        out: list[tuple[str, Callable[[str], str] | None]] = [(text, None)]
        out.append((f" {s.dot} ".join([window_text(row), *row.options]), None))
        if p.length:
            if p.payload:
                preview = payload_text(p.payload, 30, ascii=not s.unicode)
                more = f" ({len(p.payload)} captured)" if len(p.payload) < p.length else ""
                out.append((f"{p.length} bytes {preview}{more}", _plain))
            else:
                out.append((f"{p.length} bytes (not captured)", None))
        if row.why:
            # The explanation is the point of the row: wrapped, never cut.
            lines = textwrap.wrap(row.why, self.lane_w - 4) or [""]
            if len(lines) > WHY_LINES:  # at most a few; the rest is cut with an ellipsis
                lines[WHY_LINES - 1] += " " + " ".join(lines[WHY_LINES:]) + " …"
                del lines[WHY_LINES:]
            out.extend((line, s.yellow) for line in lines)
        return out


def _plain(text: str) -> str:
    return text


def _absolute(name: str, value: int, rel: int | None, symbol: str) -> str:
    """'seq x+1 = 1001'; 'seq 1001' when the ISN is unknown."""
    if rel is None:
        return f"{name} {value}"
    return f"{name} {symbol if rel == 0 else f'{symbol}+{rel}'} = {value}"


def render_text(conv: Conversation, style: Style | None = None) -> str:
    """The whole conversation: header, then every row; lines end in newlines."""
    style = style or Style(color=False)
    # the lane fits the longest arrow: its label, two lines, two spaces, four lines and a head
    widest = max((len("".join(arrow_label(r, conv.isn))) + 9 + (0 if r.delivered else LOST_GAP)
                  for r in conv.rows), default=0)
    lane = min(max(LANE_W, widest), MAX_LANE_W)
    time_w = max([TIME_W] + [len(f"{r.time * 1000:.1f}") for r in conv.rows])
    lines: list[str] = []
    ladder = TextLadder(lines.append, style, endpoints=conv.endpoints, names=conv.names,
                        initial=conv.initial, isn=conv.isn, lane_width=lane, time_width=time_w)
    ladder.header()
    for row in conv.rows:
        ladder.row(row)
    return "".join(line + "\n" for line in lines)


__all__ = ["Style", "TextLadder", "flag_words", "fmt_duration",
           "payload_text", "render_text", "stream_takes_unicode"]
