"""Time-sequence graphs (Stevens, tcptrace): one direction of one connection, seq against time.

Data from side D are vertical bars from a segment's first to its last byte at the time it was
seen; the other side's ACKs are a green step line and its advertised window (ACK + window) an
olive one above it; SACK blocks, dup ACKs, zero windows, retransmissions and losses are marked.
`build_scene` turns a Conversation into drawing primitives in pixels; `render_svg` writes them
as SVG text and `render_png` rasterizes the same primitives with `raster`, so both agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from xml.sax.saxutils import escape

from ..wire.tcp import FIN, RST, SYN
from .model import DUP_ACK, LEFT, LOST, RETRANSMISSION, RIGHT, ZERO_WINDOW, Conversation, Row
from .raster import ADVANCE, GLYPH_HEIGHT, Canvas, text_width

DEFAULT_WIDTH, DEFAULT_HEIGHT = 1000, 600
MIN_WIDTH, MIN_HEIGHT = 320, 240
MAX_SIDE = 8000  # pixels: a PNG this size is already 190 MB of pixels in memory

BACKGROUND = "#ffffff"
INK = "#222222"  # text, axes
GRID = "#e8e8e8"
DATA = "#1f4e9c"
RETRANS = "#d62728"
LOST_INK = "#000000"
ACK_INK = "#2ca02c"
WINDOW_INK = "#b3a000"
SACK_INK = "#8e44ad"
DUPACK_INK = "#145c14"
ZERO_INK = "#ff7f0e"
EDGE_INK = "#000000"  # SYN, FIN, RST markers

MARKER_SIZE = 3  # pixels from a marker's centre to its edge


# ------------------------------------------------------------------ primitives (pixels)


@dataclass(frozen=True, slots=True)
class Line:
    x1: float
    y1: float
    x2: float
    y2: float
    color: str
    width: int = 1
    cls: str = ""


@dataclass(frozen=True, slots=True)
class Bar:
    """A vertical bar from y1 down to y2, end ticks `tick` pixels to each side (tcptrace's I)."""

    x: float
    y1: float  # top (smaller y)
    y2: float  # bottom
    color: str
    tick: int
    cls: str


@dataclass(frozen=True, slots=True)
class Steps:
    """A polyline through points already laid out as steps."""

    points: tuple[tuple[float, float], ...]
    color: str
    width: int
    cls: str


@dataclass(frozen=True, slots=True)
class Marker:
    kind: str  # disc, ring, cross, diamond, tick, vtick, triangle
    x: float
    y: float
    color: str
    cls: str


@dataclass(frozen=True, slots=True)
class Text:
    x: float  # left
    y: float  # top
    text: str  # ASCII: the PNG's bitmap font has nothing else
    color: str
    scale: int = 1
    cls: str = ""

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x, self.y, self.x + text_width(self.text, self.scale),
                self.y + GLYPH_HEIGHT * self.scale)


Item = Line | Bar | Steps | Marker | Text


@dataclass(frozen=True, slots=True)
class Scale:
    """A linear map from data values onto pixels."""

    d0: float
    d1: float
    p0: float
    p1: float

    def __call__(self, value: float) -> float:
        return self.p0 + (value - self.d0) * (self.p1 - self.p0) / (self.d1 - self.d0)


@dataclass(slots=True)
class Scene:
    width: int
    height: int
    plot: tuple[int, int, int, int]  # left, top, right, bottom of the data area
    x_of: Scale  # seconds -> x
    y_of: Scale  # relative sequence number -> y
    below: list[Item] = field(default_factory=list)  # grid, under the data
    inside: list[Item] = field(default_factory=list)  # the data, clipped to the plot area
    above: list[Item] = field(default_factory=list)  # axes, labels, title, legend

    @property
    def items(self) -> list[Item]:
        return self.below + self.inside + self.above


# ------------------------------------------------------------------ numbers


def default_direction(conv: Conversation) -> int:
    """The side that sent more payload bytes (LEFT on a tie)."""
    sent = [0, 0]
    for row in conv.rows:
        sent[row.sender] += row.packet.length
    return RIGHT if sent[RIGHT] > sent[LEFT] else LEFT


def _signed(value: int) -> int:
    """A relative number just below the ISN (a keep-alive before any data) is negative."""
    return value - (1 << 32) if value >= 1 << 31 else value


def nice_step(span: float, count: int) -> float:
    """1, 2 or 5 times a power of ten, so that about `count` steps cover `span`."""
    raw = span / max(1, count)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5):
        if factor * magnitude >= raw * (1 - 1e-9):
            return factor * magnitude
    return 10 * magnitude


def tick_values(lo: float, hi: float, step: float) -> list[float]:
    """Multiples of `step` in [max(lo, 0), hi]."""
    first = math.ceil(max(lo, 0.0) / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    return [k * step for k in range(first, last + 1)]


def _number(value: float, step: float) -> str:
    """A tick value with as many decimals as the step needs."""
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    text = f"{value:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def time_unit(step: float) -> tuple[str, float]:
    """('s', 1), ('ms', 1e-3) or ('us', 1e-6): the unit the tick step reads best in."""
    if step >= 0.1 * (1 - 1e-9):
        return "s", 1.0
    if step >= 1e-4 * (1 - 1e-9):
        return "ms", 1e-3
    return "us", 1e-6


def byte_unit(top: float) -> tuple[str, float]:
    """'B', 'KB' (1000) or 'MB' (10**6), by the largest value on the axis."""
    if top >= 2e6:
        return "MB", 1e6
    if top >= 2e4:
        return "KB", 1e3
    return "B", 1.0


def byte_label(value: float, step: float, unit: tuple[str, float]) -> str:
    name, size = unit
    number = _number(value / size, step / size)
    return number if number == "0" else f"{number} {name}"


# ------------------------------------------------------------------ labels that never overlap


class _Labels:
    """Places short labels beside points; drops one that would cover another or leave the area."""

    CELL = 32

    def __init__(self, area: tuple[int, int, int, int]) -> None:
        self.area = area
        self.cells: dict[tuple[int, int], list[tuple[float, float, float, float]]] = {}

    def _cells(self, box: tuple[float, float, float, float]) -> Iterable[tuple[int, int]]:
        x0, y0, x1, y1 = (int(v // self.CELL) for v in box)
        return ((cx, cy) for cx in range(x0, x1 + 1) for cy in range(y0, y1 + 1))

    def free(self, box: tuple[float, float, float, float]) -> bool:
        left, top, right, bottom = self.area
        if box[0] < left or box[1] < top or box[2] > right or box[3] > bottom:
            return False
        return not any(
            box[0] <= o[2] + 1 and o[0] <= box[2] + 1 and box[1] <= o[3] + 1 and o[1] <= box[3] + 1
            for cell in self._cells(box) for o in self.cells.get(cell, ()))

    def take(self, box: tuple[float, float, float, float]) -> None:
        for cell in self._cells(box):
            self.cells.setdefault(cell, []).append(box)

    def place(self, text: str, x: float, y: float, color: str, cls: str) -> Text | None:
        """The label right-above, right-below, left-above or left-below (x, y), if one is free."""
        w, h = text_width(text), GLYPH_HEIGHT
        gap = MARKER_SIZE + 2
        for lx, ly in ((x + gap, y - gap - h), (x + gap, y + gap), (x - gap - w, y - gap - h),
                       (x - gap - w, y + gap)):
            label = Text(round(lx), round(ly), text, color, 1, cls)
            if self.free(label.box):
                self.take(label.box)
                return label
        return None


# ------------------------------------------------------------------ the scene


def _steps(samples: list[tuple[float, int]], x_of: Scale,
           y_of: Scale) -> tuple[tuple[float, float], ...]:
    """The step line through (time, value) samples: across at the old value, then up or down."""
    points: list[tuple[float, float]] = []
    for n, (t, value) in enumerate(samples):
        x, y = round(x_of(t)), round(y_of(value), 1)
        if points:
            px, py = points[-1]
            if y == py and n < len(samples) - 1:
                continue
            if x != px:
                points.append((x, py))
            if y == py:
                continue
        points.append((x, y))
    return tuple(points)


def _legend(entries: list[tuple[str, str, str]], left: int, right: int, top: int,
            into: list[Item]) -> int:
    """Swatch and name for each entry, wrapping at `right`; the y just below the last row."""
    x, y = left, top
    row_height = GLYPH_HEIGHT + 7
    for kind, color, name in entries:
        width = 16 + 4 + text_width(name)
        if x > left and x + width > right:
            x, y = left, y + row_height
        cy = y + GLYPH_HEIGHT / 2
        if kind == "bar":
            into.append(Bar(x + 8, cy - 5, cy + 4, color, 2, "legend"))
        elif kind == "line":
            into.append(Line(x, cy, x + 16, cy, color, 2, "legend"))
        else:
            into.append(Marker(kind, x + 8, cy, color, "legend"))
        into.append(Text(x + 20, y, name, INK, 1, "legend"))
        x += width + 16
    return y + row_height


def _fit(text: str, room: int, scale: int) -> str:
    """The text cut to `room` pixels, ending in '...' when cut."""
    if text_width(text, scale) <= room:
        return text
    keep = max(0, (room + scale) // (ADVANCE * scale) - 3)
    return text[:keep] + "..."


def _check(direction: int, width: int, height: int) -> None:
    if direction not in (LEFT, RIGHT):
        raise ValueError(f"direction must be {LEFT} (left) or {RIGHT} (right), not {direction!r}")
    if not (MIN_WIDTH <= width <= MAX_SIDE and MIN_HEIGHT <= height <= MAX_SIDE):
        raise ValueError(f"graph size {width}x{height} is outside {MIN_WIDTH}x{MIN_HEIGHT}"
                         f" to {MAX_SIDE}x{MAX_SIDE} pixels")


def build_scene(conv: Conversation, direction: int | None = None,
                width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT) -> Scene:
    """The time-sequence graph of the data `direction` (LEFT or RIGHT, default: the busier) sent."""
    if direction is None:
        direction = default_direction(conv)
    _check(direction, width, height)
    data = [r for r in conv.rows if r.sender == direction and r.rel_seq is not None]
    acks = [r for r in conv.rows if r.sender != direction and r.rel_ack is not None]
    replies = [r for r in conv.rows if r.sender != direction]

    # Vertical extent: the data, the ACKs and the SACK blocks; the window only when it does not
    # squash everything else (a 64 KB window over a 2-byte handshake runs off the top instead).
    values = [0]
    for r in data:
        start = _signed(r.rel_seq)
        values += (start, start + r.packet.seq_space)
    values += [_signed(r.rel_ack) for r in acks]
    values += [edge for r in replies for block in r.sack for edge in block]
    lo, hi = min(values), max(values)
    windows = [_signed(r.rel_ack) + r.window for r in acks]
    window_fits = not windows or max(windows) <= hi + max(hi - lo, 1)
    if window_fits and windows:
        hi = max(hi, max(windows))
    span = max(hi - lo, 1)
    y_lo, y_hi = lo - span * 0.02, hi + span * 0.05

    t_end = max((r.time for r in conv.rows), default=0.0)
    t_span = t_end if t_end > 0 else 1e-3
    x_lo, x_hi = -t_span * 0.015, t_end + t_span * 0.03

    # Title and legend decide where the plot starts.
    above: list[Item] = []
    title = f"{conv.label(direction)} -> {conv.label(1 - direction)}"
    scale = 2 if text_width(title, 2) <= width - 24 else 1
    above.append(Text(12, 8, _fit(title, width - 24, scale), INK, scale, "title"))
    top = 8 + GLYPH_HEIGHT * scale + 6
    payload = sum(r.packet.length for r in data)
    resent = sum(1 for r in data if RETRANSMISSION in r.marks and r.packet.length)
    lost = sum(1 for r in data if LOST in r.marks)
    summary = (f"time-sequence graph: {sum(1 for r in data if r.packet.length)} data segments,"
               f" {payload:,} bytes, {resent} retransmitted, {lost} lost")
    above.append(Text(12, top, _fit(summary, width - 24, 1), INK, 1, "subtitle"))
    top += GLYPH_HEIGHT + 8

    present = {m for r in conv.rows for m in r.marks}
    entries = [("bar", DATA, "data"), ("line", ACK_INK, "ACK"),
               ("line", WINDOW_INK, "window" if window_fits else "window (partly off the top)")]
    if RETRANSMISSION in present:
        entries.insert(1, ("bar", RETRANS, "retransmitted"))
    if LOST in present:
        entries.append(("cross", LOST_INK, "lost"))
    if any(r.sack for r in replies):
        entries.append(("bar", SACK_INK, "SACK block"))
    if DUP_ACK in present:
        entries.append(("vtick", DUPACK_INK, "dup ACK"))
    if ZERO_WINDOW in present:
        entries.append(("triangle", ZERO_INK, "zero window"))
    top = _legend(entries, 12, width - 12, top, above) + 14  # room for the y axis name

    # Ticks first: the widest y label decides the left margin.
    plot_h_guess = height - top - 40
    y_step = nice_step(y_hi - y_lo, max(2, plot_h_guess // 45))
    y_step = max(1.0, y_step)
    unit = byte_unit(max(abs(y_lo), abs(y_hi)))
    y_ticks = [(v, byte_label(v, y_step, unit)) for v in tick_values(y_lo, y_hi, y_step)]
    label_w = max((text_width(label) for _, label in y_ticks), default=6)
    left, right, bottom = 12 + label_w + 8, width - 16, height - 40
    plot = (left, top, right, bottom)
    x_of = Scale(x_lo, x_hi, left, right)
    y_of = Scale(y_lo, y_hi, bottom, top)
    scene = Scene(width, height, plot, x_of, y_of, above=above)

    x_step = nice_step(x_hi - x_lo, max(2, (right - left) // 90))
    name, size = time_unit(x_step)
    x_labels = [(v, _number(v / size, x_step / size)) for v in tick_values(x_lo, x_hi, x_step)]
    widest = max(text_width(label) for _, label in x_labels)
    while len(x_labels) > 2 and x_of(x_labels[1][0]) - x_of(x_labels[0][0]) < widest + 12:
        x_labels = x_labels[::2]

    for v, label in x_labels:
        x = round(x_of(v))
        scene.below.append(Line(x, top, x, bottom, GRID, 1, "grid"))
        scene.above.append(Line(x, bottom, x, bottom + 4, INK, 1, "tick"))
        scene.above.append(Text(x - text_width(label) // 2, bottom + 7, label, INK, 1, "xtick"))
    for v, label in y_ticks:
        y = round(y_of(v))
        scene.below.append(Line(left, y, right, y, GRID, 1, "grid"))
        scene.above.append(Line(left - 4, y, left, y, INK, 1, "tick"))
        scene.above.append(Text(left - 7 - text_width(label), y - GLYPH_HEIGHT // 2, label, INK,
                                1, "ytick"))
    scene.above.append(Steps(((left, top), (left, bottom), (right, bottom)), INK, 1, "axis"))
    x_name = f"time since the first packet ({name})"
    scene.above.append(Text((left + right - text_width(x_name)) // 2, bottom + 22, x_name, INK,
                            1, "xname"))
    y_name = f"relative sequence number of {conv.names[direction]}'s data"
    scene.above.append(Text(left - 7 - label_w, top - GLYPH_HEIGHT - 7,
                            _fit(y_name, width - left, 1), INK, 1, "yname"))

    labels = _Labels(plot)
    _draw_data(scene, data, labels)
    _draw_replies(scene, replies, acks, labels)
    if not data and not acks:
        note = "no sequence numbers to draw for this direction"
        scene.above.append(Text((left + right - text_width(note)) // 2, (top + bottom) // 2,
                                note, INK, 1, "note"))
    return scene


def _draw_data(scene: Scene, data: list[Row], labels: _Labels) -> None:
    x_of, y_of, out = scene.x_of, scene.y_of, scene.inside
    marks: list[tuple[Marker, str]] = []
    for r in data:
        x = round(x_of(r.time))
        start = _signed(r.rel_seq)
        flags = r.packet.flags
        if flags & SYN:
            marks.append((Marker("diamond", x, round(y_of(start), 1), EDGE_INK, "mark-syn"), "SYN"))
            start += 1
        if r.packet.length:
            y2, y1 = y_of(start), y_of(start + r.packet.length)
            y1 = min(y1, y2 - 1)  # at least a pixel, however thin the segment
            again = RETRANSMISSION in r.marks
            cls = "seg" + (" retrans" if again else "") + (" lost" if LOST in r.marks else "")
            tick = 2 if y2 - y1 >= 4 else 0
            out.append(Bar(x, round(y1, 1), round(y2, 1), RETRANS if again else DATA, tick, cls))
            if again:
                marks.append((Marker("ring", x, round(y1, 1), RETRANS, "mark-retrans"), "R"))
            if LOST in r.marks:
                out.append(Marker("cross", x, round((y1 + y2) / 2, 1), LOST_INK, "mark-lost"))
        end = start + r.packet.length
        if flags & FIN:
            marks.append((Marker("diamond", x, round(y_of(end), 1), EDGE_INK, "mark-fin"), "FIN"))
        if flags & RST:
            marks.append((Marker("cross", x, round(y_of(end), 1), EDGE_INK, "mark-rst"), "RST"))
    # Markers go on top of every bar, labels where they fit.
    for marker, text in marks:
        out.append(marker)
        label = labels.place(text, marker.x, marker.y, marker.color, "label")
        if label:
            scene.above.append(label)


def _draw_replies(scene: Scene, replies: list[Row], acks: list[Row], labels: _Labels) -> None:
    x_of, y_of, out = scene.x_of, scene.y_of, scene.inside
    window = [(r.time, _signed(r.rel_ack) + r.window) for r in acks]
    ack = [(r.time, _signed(r.rel_ack)) for r in acks]
    if window:
        out.append(Steps(_steps(window, x_of, y_of), WINDOW_INK, 1, "window"))
    for r in replies:
        x = round(x_of(r.time))
        for edge_lo, edge_hi in r.sack:
            y2, y1 = y_of(edge_lo), y_of(edge_hi)
            out.append(Bar(x, round(min(y1, y2 - 1), 1), round(y2, 1), SACK_INK, 0, "sack"))
    if ack:
        out.append(Steps(_steps(ack, x_of, y_of), ACK_INK, 1, "ack"))
    for r in replies:
        if r.rel_ack is None:
            continue
        x, y = round(x_of(r.time)), round(y_of(_signed(r.rel_ack)), 1)
        if DUP_ACK in r.marks:
            out.append(Marker("vtick", x, y, DUPACK_INK, "mark-dupack"))
        if ZERO_WINDOW in r.marks:
            out.append(Marker("triangle", x, y, ZERO_INK, "mark-zerowin"))
            label = labels.place("0 win", x, y, ZERO_INK, "label")
            if label:
                scene.above.append(label)
        if r.packet.flags & RST:
            out.append(Marker("cross", x, y, EDGE_INK, "mark-rst"))
            label = labels.place("RST", x, y, EDGE_INK, "label")
            if label:
                scene.above.append(label)


# ------------------------------------------------------------------ SVG

_S = MARKER_SIZE
_SVG_MARKERS = (
    f'<circle id="m-disc" r="{_S}" stroke="none"/>'
    f'<circle id="m-ring" r="{_S - 0.5}" fill="none" stroke-width="1.5"/>'
    f'<path id="m-cross" d="M{-_S} {-_S}L{_S} {_S}M{-_S} {_S}L{_S} {-_S}" fill="none"'
    ' stroke-width="2"/>'
    f'<path id="m-diamond" d="M0 {-_S}L{_S} 0L0 {_S}L{-_S} 0Z" stroke="none"/>'
    f'<path id="m-tick" d="M{-_S} 0H{_S}" fill="none" stroke-width="1.5"/>'
    f'<path id="m-vtick" d="M0.5 {-_S}V{_S}" fill="none" stroke-width="2"/>'
    f'<path id="m-triangle" d="M0 0L{-_S} {-_S}H{_S}Z" stroke="none"/>'
)


def _n(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _svg_item(item: Item) -> str:
    cls = f' class="{item.cls}"' if item.cls else ""
    if isinstance(item, Bar):
        x, y1, y2, t = _n(item.x), _n(item.y1), _n(item.y2), item.tick
        d = f"M{x} {y1}V{y2}"
        if t:
            d += f"M{_n(item.x - t)} {y1}h{2 * t}M{_n(item.x - t)} {y2}h{2 * t}"
        return f'<path{cls} d="{d}" stroke="{item.color}"/>'
    if isinstance(item, Line):
        width = f' stroke-width="{item.width}"' if item.width != 1 else ""
        return (f'<line{cls} x1="{_n(item.x1)}" y1="{_n(item.y1)}" x2="{_n(item.x2)}"'
                f' y2="{_n(item.y2)}" stroke="{item.color}"{width}/>')
    if isinstance(item, Steps):
        points = " ".join(f"{_n(x)},{_n(y)}" for x, y in item.points)
        width = f' stroke-width="{item.width}"' if item.width != 1 else ""
        return f'<polyline{cls} points="{points}" stroke="{item.color}"{width}/>'
    if isinstance(item, Marker):
        return (f'<use{cls} href="#m-{item.kind}" x="{_n(item.x)}" y="{_n(item.y)}"'
                f' fill="{item.color}" stroke="{item.color}"/>')
    # Text: the bitmap font's box, as a monospace font stretched to the same width.
    size = 10 * item.scale
    return (f'<text{cls} x="{_n(item.x)}" y="{_n(item.y + GLYPH_HEIGHT * item.scale)}"'
            f' font-size="{size}" textLength="{text_width(item.text, item.scale)}"'
            f' lengthAdjust="spacingAndGlyphs" fill="{item.color}">{escape(item.text)}</text>')


def render_svg(scene: Scene) -> str:
    left, top, right, bottom = scene.plot
    parts = [
        (f'<svg xmlns="http://www.w3.org/2000/svg" width="{scene.width}"'
         f' height="{scene.height}" viewBox="0 0 {scene.width} {scene.height}"'
         ' font-family="DejaVu Sans Mono, monospace">'),
        (f'<defs><clipPath id="plot-area"><rect x="{left}" y="{top}" width="{right - left + 1}"'
         f' height="{bottom - top + 1}"/></clipPath>{_SVG_MARKERS}</defs>'),
        f'<rect width="{scene.width}" height="{scene.height}" fill="{BACKGROUND}"/>',
        '<g fill="none" shape-rendering="crispEdges">',
        *map(_svg_item, scene.below),
        '</g><g fill="none" clip-path="url(#plot-area)" shape-rendering="crispEdges">',
        *map(_svg_item, scene.inside),
        '</g><g fill="none">',
        *map(_svg_item, scene.above),
        "</g></svg>",
    ]
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------ PNG


def _paint(canvas: Canvas, item: Item) -> None:
    if isinstance(item, Bar):
        x, y1, y2 = round(item.x), round(item.y1), round(item.y2)
        canvas.vline(x, y1, y2, item.color)
        if item.tick:
            canvas.hline(x - item.tick, x + item.tick, y1, item.color)
            canvas.hline(x - item.tick, x + item.tick, y2, item.color)
    elif isinstance(item, Line):
        canvas.line(item.x1, item.y1, item.x2, item.y2, item.color, item.width)
    elif isinstance(item, Steps):
        for (x1, y1), (x2, y2) in pairwise(item.points):
            canvas.line(x1, y1, x2, y2, item.color, item.width)
    elif isinstance(item, Marker):
        canvas.marker(item.kind, item.x, item.y, item.color, MARKER_SIZE)
    else:
        canvas.text(item.x, item.y, item.text, item.color, item.scale)


def render_png(scene: Scene) -> bytes:
    canvas = Canvas(scene.width, scene.height, BACKGROUND)
    for item in scene.below:
        _paint(canvas, item)
    left, top, right, bottom = scene.plot
    canvas.set_clip(left, top, right + 1, bottom + 1)
    for item in scene.inside:
        _paint(canvas, item)
    canvas.reset_clip()
    for item in scene.above:
        _paint(canvas, item)
    return canvas.to_png()


# ------------------------------------------------------------------ entry points


def plot_svg(conv: Conversation, direction: int | None = None,
             width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT) -> str:
    """The time-sequence graph of `direction`'s data (default: the busier side) as SVG text."""
    return render_svg(build_scene(conv, direction, width, height))


def plot_png(conv: Conversation, direction: int | None = None,
             width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT) -> bytes:
    """The same graph as a PNG image of width x height pixels."""
    return render_png(build_scene(conv, direction, width, height))


def write_plot(conv: Conversation, out: str | Path, direction: int | None = None,
               width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT) -> None:
    """Write the graph to OUT.svg or OUT.png; ValueError (one line) for any other name."""
    suffix = Path(out).suffix.lower()
    if suffix == ".svg":
        Path(out).write_text(plot_svg(conv, direction, width, height), encoding="utf-8")
    elif suffix == ".png":
        Path(out).write_bytes(plot_png(conv, direction, width, height))
    else:
        raise ValueError(f"cannot tell the format of {str(out)!r}: name it .svg or .png")
