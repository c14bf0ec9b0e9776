"""The ladder as a standalone SVG document: time flows down, one slanted arrow per packet.

Each packet is a `<g class="packet" data-index="N">` holding its line, its head (or, for a
lost packet, a red ✕ halfway), its label above the line and a `<title>` with the details.
Colours: blue to the right, purple to the left, orange for retransmissions, red for RST.
All text is escaped (payload previews come from the network) and nothing is loaded from
anywhere: generic font families only, no scripts, no stylesheets.
"""

from __future__ import annotations

import math
import re

from ..wire.tcp import ACK, RST
from .model import LEFT, LOST, RESET, RETRANSMISSION, RIGHT, Conversation, Row
from .text import arrow_words, ordered_marks, payload_text, window_text

TO_RIGHT_COLOR = "#1565c0"
TO_LEFT_COLOR = "#8e24aa"
RETRANSMISSION_COLOR = "#ef6c00"
RESET_COLOR = "#c62828"
LOST_COLOR = "#d50000"
AXIS_COLOR = "#455a64"
STATE_COLOR = "#2e7d32"
MUTED_COLOR = "#607d8b"

FONT_SIZE = 12
CHAR_W = 7.3  # a monospace character at FONT_SIZE, generously
TIME_X = 84  # right edge of the time column
STATE_W = 132  # room for "SYN-RECEIVED" beside an axis
MIN_LANE = 560
MAX_LANE = 900
TOP = 84  # below the titles and the initial states
ROW_H = 40
SLOPE = 14  # how far an arrow falls between the axes: the packet's time in flight, stylised
HEAD = 9
BOTTOM = 24
MAX_LABEL = 120  # characters of an arrow label

_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: str) -> str:
    """Text safe inside an element or a double-quoted attribute (HTML or XML)."""
    text = _XML_INVALID.sub("\ufffd", text)
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("'", "&#39;"))


def label(row: Row, isn: tuple[int | None, int | None]) -> str:
    """'PSH-ACK seq=1 ack=1 len=15 [retransmission]': what an arrow says."""
    marks = ordered_marks(row.marks)
    text = arrow_words(row, isn, sep=" ") + (f" [{', '.join(marks)}]" if marks else "")
    return text if len(text) <= MAX_LABEL else text[:MAX_LABEL - 1] + "…"


def details(conv: Conversation, row: Row) -> str:
    """One line of everything about a row: its tooltip, and the HTML table's source."""
    p = row.packet
    parts = [(f"#{row.index} {row.time * 1000:.1f} ms {conv.names[row.sender]} → "
             f"{conv.names[1 - row.sender]}: {label(row, conv.isn)}"),
             absolute(row), " · ".join([window_text(row), *row.options])]
    if p.length:
        parts.append(f"{p.length} bytes {payload_text(p.payload, 64)}" if p.payload
                     else f"{p.length} bytes (not captured)")
    if row.why:
        parts.append(row.why)
    return "; ".join(parts)


def absolute(row: Row) -> str:
    """'seq 1001 ack 5001': the numbers on the wire."""
    p = row.packet
    return f"seq {p.seq}" + (f" ack {p.ack}" if p.flags & ACK else "")


def color(row: Row) -> str:
    if RESET in row.marks or row.packet.flags & RST:
        return RESET_COLOR
    if RETRANSMISSION in row.marks:
        return RETRANSMISSION_COLOR
    return TO_RIGHT_COLOR if row.sender == LEFT else TO_LEFT_COLOR


class _Layout:
    def __init__(self, conv: Conversation) -> None:
        longest = max((len(label(r, conv.isn)) for r in conv.rows), default=0)
        self.lane = min(max(MIN_LANE, math.ceil(longest * CHAR_W) + 80), MAX_LANE)
        self.axes = (TIME_X + 8 + STATE_W, TIME_X + 8 + STATE_W + self.lane)
        self.width = self.axes[RIGHT] + STATE_W + 8
        self.height = TOP + len(conv.rows) * ROW_H + BOTTOM

    def y(self, i: int) -> float:
        """Where row i (0-based) leaves its sender."""
        return TOP + i * ROW_H + 8


def _n(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


def _text(x: float, y: float, text: str, **attrs: str) -> str:
    extra = "".join(f' {k.rstrip("_").replace("_", "-")}="{xml_text(v)}"'
                    for k, v in attrs.items())
    return f'<text x="{_n(x)}" y="{_n(y)}"{extra}>{xml_text(text)}</text>'


def _packet(conv: Conversation, lay: _Layout, i: int, row: Row, shown: list[str]) -> list[str]:
    sender, receiver = row.sender, 1 - row.sender
    x1, x2 = lay.axes[sender], lay.axes[receiver]
    y1 = lay.y(i)
    y2 = y1 + SLOPE
    ink = color(row)
    lost = not row.delivered or LOST in row.marks
    marks = " ".join(ordered_marks(row.marks))
    out = [(f'<g class="packet" data-index="{row.index}" '
           f'data-sender="{"left" if sender == LEFT else "right"}" '
           f'data-marks="{xml_text(marks)}">'),
           f"<title>{xml_text(details(conv, row))}</title>"]
    end_x, end_y = ((x1 + x2) / 2, (y1 + y2) / 2) if lost else (x2, y2)
    length = math.hypot(end_x - x1, end_y - y1)
    ux, uy = (end_x - x1) / length, (end_y - y1) / length
    tip_x, tip_y = (end_x - ux * HEAD, end_y - uy * HEAD) if not lost else (end_x, end_y)
    dash = ' stroke-dasharray="6 4"' if lost else ""
    out.append(f'<line x1="{_n(x1)}" y1="{_n(y1)}" x2="{_n(tip_x)}" y2="{_n(tip_y)}" '
               f'stroke="{ink}" stroke-width="1.6"{dash}/>')
    if lost:
        c = 6
        out.append(f'<path class="lost" d="M{_n(end_x - c)} {_n(end_y - c)}L{_n(end_x + c)} '
                   f'{_n(end_y + c)}M{_n(end_x - c)} {_n(end_y + c)}L{_n(end_x + c)} '
                   f'{_n(end_y - c)}" stroke="{LOST_COLOR}" stroke-width="2.4"/>')
    else:
        nx, ny = -uy, ux
        points = [(end_x, end_y), (tip_x + nx * 4, tip_y + ny * 4), (tip_x - nx * 4, tip_y - ny * 4)]
        out.append('<polygon points="' + " ".join(f"{_n(a)},{_n(b)}" for a, b in points)
                   + f'" fill="{ink}"/>')
    mid_x = (x1 + x2) / 2
    out.append(_text(mid_x, (y1 + y2) / 2 - 8, label(row, conv.isn), text_anchor="middle",
                     fill=ink, font_family="monospace", font_size=str(FONT_SIZE)))
    out.append(_text(TIME_X, y1 + 4, f"{row.time * 1000:.1f}", text_anchor="end",
                     fill=MUTED_COLOR, font_family="monospace", font_size="11"))
    # each side's state where it changes: the sender's as it sends, the receiver's on arrival
    for side, y in ((sender, y1 + 4), (receiver, y2 + 4)):
        state = row.states[side]
        if state != shown[side]:
            shown[side] = state
            out.append(_state(lay, side, y, state))
    out.append("</g>")
    return out


def _state(lay: _Layout, side: int, y: float, state: str) -> str:
    x = lay.axes[side] + (-8 if side == LEFT else 8)
    return _text(x, y, state, text_anchor="end" if side == LEFT else "start", fill=STATE_COLOR,
                 font_family="sans-serif", font_size="11", font_weight="bold", class_="state")


def to_svg(conv: Conversation) -> str:
    """A standalone SVG document of the conversation (no XML declaration: it also inlines)."""
    lay = _Layout(conv)
    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" class="ladder" width="{lay.width}" '
           f'height="{lay.height}" viewBox="0 0 {lay.width} {lay.height}" '
           f'font-family="sans-serif" font-size="{FONT_SIZE}">'),
           f"<title>{xml_text(conv.label(LEFT))} ⇄ {xml_text(conv.label(RIGHT))}</title>",
           f'<rect width="{lay.width}" height="{lay.height}" fill="#ffffff"/>']
    for side in (LEFT, RIGHT):
        x = lay.axes[side]
        host_port = conv.label(side)[len(conv.names[side]) + 1:]
        out.append(_text(x, 22, conv.names[side], text_anchor="middle", font_weight="bold",
                         font_size="14", fill="#000000"))
        out.append(_text(x, 40, host_port, text_anchor="middle", font_family="monospace",
                         fill="#000000"))
        out.append(f'<line class="axis" x1="{x}" y1="{TOP - 30}" x2="{x}" '
                   f'y2="{lay.height - 8}" stroke="{AXIS_COLOR}" stroke-width="2"/>')
        out.append(_state(lay, side, TOP - 14, conv.initial[side]))
    out.append(_text(TIME_X, TOP - 14, "ms", text_anchor="end", fill=MUTED_COLOR,
                     font_family="monospace", font_size="11"))
    shown = list(conv.initial)
    for i, row in enumerate(conv.rows):
        out.extend(_packet(conv, lay, i, row, shown))
    out.append("</svg>")
    return "\n".join(out) + "\n"
