"""Time-sequence graphs (usertcp.ladder.plot) and the small rasterizer under their PNGs."""

import struct
import time
import xml.etree.ElementTree as ET
import zlib
from itertools import pairwise

import pytest

from usertcp.ladder import plot as P
from usertcp.ladder.model import (
    DUP_ACK,
    ESTABLISHED,
    LEFT,
    LOST,
    RETRANSMISSION,
    RIGHT,
    ZERO_WINDOW,
    Conversation,
    Packet,
    Row,
)
from usertcp.ladder.raster import _GLYPHS, Canvas, encode_png, rgb, text_width
from usertcp.wire.tcp import ACK, FIN, PSH, RST, SYN

CLIENT, SERVER = ("10.7.0.1", 40000), ("10.7.0.2", 80)
ISN = (1_000_000, 4_294_000_000)  # the server's wraps: relative numbers must not care
MASK = 2**32 - 1
SVG = "{http://www.w3.org/2000/svg}"


class Capture:
    """Rows built by hand, as the observer would give them."""

    def __init__(self) -> None:
        self.rows: list[Row] = []

    def add(self, sender, t, flags, seq, ack=None, length=0, window=6000, marks=(), sack=()):
        src, dst = (CLIENT, SERVER) if sender == LEFT else (SERVER, CLIENT)
        mine, theirs = ISN[sender], ISN[1 - sender]
        packet = Packet(t, src[0], src[1], dst[0], dst[1], (mine + seq) & MASK,
                        0 if ack is None else (theirs + ack) & MASK, flags | (ACK if ack else 0),
                        min(window, 0xFFFF), length,
                        sack=tuple(((theirs + a) & MASK, (theirs + b) & MASK) for a, b in sack))
        self.rows.append(Row(packet, len(self.rows) + 1, sender, t, seq, ack, window, None,
                             (ESTABLISHED, ESTABLISHED), tuple(marks), LOST not in marks, "",
                             tuple(sack)))

    def conversation(self) -> Conversation:
        return Conversation((CLIENT, SERVER), rows=self.rows, isn=ISN)


def lossy_transfer() -> Conversation:
    """7 segments, the 4th lost; 3 dup ACKs with SACK; fast retransmit; a lost 8th, RTO; close."""
    c = Capture()
    c.add(LEFT, 0.000, SYN, 0, window=64240)
    c.add(RIGHT, 0.010, SYN, 0, ack=1, window=6000)
    c.add(LEFT, 0.020, 0, 1, ack=1)
    for i in range(7):
        c.add(LEFT, 0.030 + 0.001 * i, PSH, 1 + 1000 * i, ack=1, length=1000,
              marks=(LOST,) if i == 3 else ())
    for i in range(3):
        c.add(RIGHT, 0.040 + 0.001 * i, 0, 1, ack=1001 + 1000 * i)
    for i in range(3):
        c.add(RIGHT, 0.044 + 0.001 * i, 0, 1, ack=3001, marks=(DUP_ACK,),
              sack=((4001, 5001 + 1000 * i),))
    c.add(LEFT, 0.050, PSH, 3001, ack=1, length=1000, marks=(RETRANSMISSION,))
    c.add(RIGHT, 0.060, 0, 1, ack=7001)
    c.add(LEFT, 0.061, PSH, 7001, ack=1, length=1000, marks=(LOST,))
    c.add(LEFT, 0.300, PSH, 7001, ack=1, length=1000, marks=(RETRANSMISSION,))
    c.add(RIGHT, 0.310, 0, 1, ack=8001)
    c.add(LEFT, 0.320, FIN, 8001, ack=1)
    c.add(RIGHT, 0.330, FIN, 1, ack=8002)
    c.add(LEFT, 0.340, 0, 8002, ack=2)
    return c.conversation()


def handshake() -> Conversation:
    """Open and close, no data: six packets."""
    c = Capture()
    c.add(LEFT, 0.0, SYN, 0, window=64240)
    c.add(RIGHT, 0.0001, SYN, 0, ack=1, window=65160)
    c.add(LEFT, 0.0002, 0, 1, ack=1, window=64256)
    c.add(LEFT, 0.0003, FIN, 1, ack=1, window=64256)
    c.add(RIGHT, 0.0004, FIN, 1, ack=2, window=65152)
    c.add(LEFT, 0.0005, 0, 2, ack=2, window=64256)
    return c.conversation()


def bulk(segments: int, seconds: float = 2.0, every: int = 97) -> Conversation:
    """A bulk transfer from the server: an ACK every second segment, every `every`th resent."""
    c = Capture()
    c.add(LEFT, 0.0, SYN, 0)
    c.add(RIGHT, 0.0002, SYN, 0, ack=1)
    seq, step = 1, seconds / segments
    for i in range(segments):
        again = i % every == every - 1
        if again:
            c.add(RIGHT, i * step, PSH, seq - 1448 * 3, ack=1, length=1448,
                  marks=(RETRANSMISSION,))
        else:
            c.add(RIGHT, i * step, PSH, seq, ack=1, length=1448)
            seq += 1448
        if i % 2:
            c.add(LEFT, i * step + step / 2, 0, 1, ack=seq - 1448, window=3_000_000)
    return c.conversation()


def classes(svg: str) -> list[tuple[ET.Element, set[str]]]:
    root = ET.fromstring(svg)
    return [(e, set(e.get("class", "").split())) for e in root.iter() if e.get("class")]


def points(element: ET.Element) -> list[tuple[float, float]]:
    return [tuple(map(float, p.split(","))) for p in element.get("points").split()]


# ------------------------------------------------------------------ SVG


def test_svg_draws_every_segment_sack_block_and_mark():
    svg = P.plot_svg(lossy_transfer(), LEFT)
    found = classes(svg)
    bars = [c for _, c in found if "seg" in c]
    assert len(bars) == 10  # 7 + the lost 8th + two retransmissions
    assert sum("retrans" in c for c in bars) == 2
    assert sum("lost" in c for c in bars) == 2
    count = {name: sum(name in c for _, c in found)
             for name in ("sack", "mark-retrans", "mark-lost", "mark-dupack", "mark-syn",
                          "mark-fin", "ack", "window")}
    assert count == {"sack": 3, "mark-retrans": 2, "mark-lost": 2, "mark-dupack": 3,
                     "mark-syn": 1, "mark-fin": 1, "ack": 1, "window": 1}
    texts = [e.text for e, c in found if "label" in c]
    assert sorted(texts) == ["FIN", "R", "R", "SYN"]
    title = next(e.text for e, c in found if "title" in c)
    assert title == "client 10.7.0.1:40000 -> server 10.7.0.2:80"
    legend = [e.text for e, c in found if "legend" in c and e.tag == SVG + "text"]
    assert legend == ["data", "retransmitted", "ACK", "window", "lost", "SACK block", "dup ACK"]


def test_retransmission_marker_sits_on_top_of_its_segment():
    conv = lossy_transfer()
    scene = P.build_scene(conv, LEFT)
    found = classes(P.render_svg(scene))
    marks = sorted((float(e.get("x")), float(e.get("y"))) for e, c in found
                   if "mark-retrans" in c)
    # The fast retransmission (t=0.05, bytes 3001-4000), then the RTO one (t=0.3, 7001-8000).
    fast, rto = marks
    assert fast == (round(scene.x_of(0.050)), round(scene.y_of(4001), 1))
    assert rto == (round(scene.x_of(0.300)), round(scene.y_of(8001), 1))
    left, top, right, bottom = scene.plot
    # Independently of the scale: 0.3 s into a 0.34 s capture is 86 % across (with the margins).
    assert 0.8 < (rto[0] - left) / (right - left) < 0.9
    # The 6000-byte window fits, so the axis reaches about 14700: 8001 is 55 % up, 4001 29 %.
    assert 0.5 < (bottom - rto[1]) / (bottom - top) < 0.6
    assert 0.25 < (bottom - fast[1]) / (bottom - top) < 0.32
    rto_bar = next(e for e, c in found if "retrans" in c and "seg" in c
                   and e.get("d").startswith(f"M{rto[0]:g} "))
    assert rto_bar.get("d").split("V")[0] == f"M{rto[0]:g} {rto[1]:g}"
    assert rto_bar.get("stroke") == P.RETRANS


def test_ack_and_window_lines_end_at_the_final_ack():
    conv = lossy_transfer()
    scene = P.build_scene(conv, LEFT)
    found = classes(P.render_svg(scene))
    ack = points(next(e for e, c in found if "ack" in c))
    window = points(next(e for e, c in found if "window" in c))
    assert ack[0] == (round(scene.x_of(0.010)), round(scene.y_of(1), 1))
    assert ack[-1] == (round(scene.x_of(0.330)), round(scene.y_of(8002), 1))
    assert window[-1] == (round(scene.x_of(0.330)), round(scene.y_of(8002 + 6000), 1))
    # Steps: every move is straight across or straight up/down, and time never goes back.
    for (x1, y1), (x2, y2) in pairwise(ack):
        assert (x1 == x2) != (y1 == y2)
        assert x2 >= x1
    # 1 -> 1001 -> 2001 -> 3001 (dup ACKs add nothing) -> 7001 -> 8001: five rises (8001 -> 8002,
    # the FIN, is under a pixel).
    assert sum(1 for (x1, y1), (x2, y2) in pairwise(ack) if x1 == x2) == 5


def test_direction_defaults_to_the_side_that_sent_more():
    assert P.default_direction(lossy_transfer()) == LEFT
    assert P.default_direction(bulk(20)) == RIGHT
    assert P.default_direction(handshake()) == LEFT
    found = classes(P.plot_svg(bulk(20)))
    assert sum("seg" in c for _, c in found) == 20
    assert next(e.text for e, c in found if "title" in c).startswith("server 10.7.0.2:80 -> ")
    # The other way: the client sent no data, so no bars, but the server's ACKs... none either.
    other = classes(P.plot_svg(lossy_transfer(), RIGHT))
    assert sum("seg" in c for _, c in other) == 0
    assert next(e.text for e, c in other if "title" in c).startswith("server 10.7.0.2:80 -> ")


def test_handshake_only_shows_syn_fin_and_fits():
    scene = P.build_scene(handshake())
    found = classes(P.render_svg(scene))
    assert sum("seg" in c for _, c in found) == 0
    assert sorted(e.text for e, c in found if "label" in c) == ["FIN", "SYN"]
    xname = next(e.text for e, c in found if "xname" in c)
    assert xname == "time since the first packet (ms)"
    xticks = [e.text for e, c in found if "xtick" in c]
    assert xticks == ["0", "0.1", "0.2", "0.3", "0.4", "0.5"]
    # The 64 KB window would flatten the 2 bytes of SYN and FIN: it runs off the top instead.
    syn = next(e for e, c in found if "mark-syn" in c)
    fin = next(e for e, c in found if "mark-fin" in c)
    _, top, _, bottom = scene.plot
    # SYN at 0, FIN at 1, the last ACK at 2: the FIN halfway up.
    assert 0.45 < (float(syn.get("y")) - float(fin.get("y"))) / (bottom - top) < 0.5
    assert_texts_apart(scene)


def test_zero_window_and_reset_are_marked():
    c = Capture()
    c.add(LEFT, 0.0, SYN, 0)
    c.add(RIGHT, 0.01, SYN, 0, ack=1)
    c.add(LEFT, 0.02, PSH, 1, ack=1, length=500)
    c.add(RIGHT, 0.03, 0, 1, ack=501, window=0, marks=(ZERO_WINDOW,))
    c.add(LEFT, 0.04, RST, 501, ack=1)
    scene = P.build_scene(c.conversation())
    found = classes(P.render_svg(scene))
    zero = next(e for e, c in found if "mark-zerowin" in c)
    assert (float(zero.get("x")), float(zero.get("y"))) == (
        round(scene.x_of(0.03)), round(scene.y_of(501), 1))
    assert sorted(e.text for e, c in found if "label" in c) == ["0 win", "RST", "SYN"]
    assert sum("mark-rst" in c for _, c in found) == 1


def test_empty_conversation_still_draws():
    conv = Conversation((CLIENT, SERVER))
    found = classes(P.plot_svg(conv))
    assert [e.text for e, c in found if "note" in c] == [
        "no sequence numbers to draw for this direction"]
    assert P.plot_png(conv, width=400, height=300).startswith(b"\x89PNG\r\n\x1a\n")


def assert_texts_apart(scene: P.Scene) -> None:
    texts = [i for i in scene.items if isinstance(i, P.Text)]
    for n, a in enumerate(texts):
        ax0, ay0, ax1, ay1 = a.box
        assert 0 <= ax0 and ax1 <= scene.width and 0 <= ay0 and ay1 <= scene.height, a
        for b in texts[n + 1:]:
            bx0, by0, bx1, by1 = b.box
            assert ax1 < bx0 or bx1 < ax0 or ay1 < by0 or by1 < ay0, (a, b)


@pytest.mark.parametrize("width,height", [(1000, 600), (400, 300)])
def test_no_text_overlaps_on_a_busy_graph(width, height):
    scene = P.build_scene(bulk(2000), width=width, height=height)
    assert_texts_apart(scene)
    ticks = [i.text for i in scene.above if isinstance(i, P.Text) and i.cls == "xtick"]
    assert ticks[0] == "0" and len(ticks) >= 3
    yticks = [i.text for i in scene.above if isinstance(i, P.Text) and i.cls == "ytick"]
    assert yticks[0] == "0" and all(t.endswith(" MB") for t in yticks[1:])
    # Thin segments: no end ticks when a bar is a pixel or two tall.
    bars = [i for i in scene.inside if isinstance(i, P.Bar) and "seg" in i.cls]
    assert len(bars) == 2000 and all(b.tick == 0 for b in bars)
    assert sum(1 for i in scene.above if isinstance(i, P.Text) and i.cls == "label") >= 5
    # A 3 MB window over a 2.9 MB transfer would halve the graph: it is cut off, and says so.
    legend = [i.text for i in scene.above if isinstance(i, P.Text) and i.cls == "legend"]
    assert "window (partly off the top)" in legend


def test_tick_numbers_and_units():
    assert [P.nice_step(s, 5) for s in (1, 7, 0.0031, 2_900_000)] == [0.2, 2, 0.001, 1_000_000]
    assert P.tick_values(-0.1, 1.05, 0.25) == [0, 0.25, 0.5, 0.75, 1.0]
    assert P.time_unit(0.5) == ("s", 1.0) and P.time_unit(0.02) == ("ms", 1e-3)
    assert P.time_unit(5e-5) == ("us", 1e-6)
    mb = P.byte_unit(2_900_000)
    assert [P.byte_label(v, 500_000, mb) for v in (0, 500_000, 2_500_000)] == [
        "0", "0.5 MB", "2.5 MB"]
    assert P.byte_label(20_000, 10_000, P.byte_unit(45_000)) == "20 KB"
    assert P.byte_label(1500, 500, P.byte_unit(8000)) == "1500 B"


# ------------------------------------------------------------------ PNG


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def decode_png(data: bytes) -> tuple[int, int, list[bytearray]]:
    """Width, height and RGB rows of an 8-bit RGB PNG: chunks, CRCs, inflate, all five filters."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    assert set(chunks) == {b"IHDR", b"IDAT", b"IEND"}
    width, height, depth, color, *_ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, color) == (8, 2)
    raw, stride, rows = zlib.decompress(chunks[b"IDAT"]), width * 3, []
    assert len(raw) == (stride + 1) * height
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            a, b = (line[i - 3] if i >= 3 else 0), prev[i]
            c = prev[i - 3] if i >= 3 else 0
            line[i] = (line[i] + (0, a, b, (a + b) // 2, _paeth(a, b, c))[kind]) & 255
        rows.append(line)
        prev = line
    return width, height, rows


def near(rows, x: float, y: float, color: str, reach: int = 2) -> bool:
    want = tuple(rgb(color))
    return any(tuple(rows[yy][xx * 3:xx * 3 + 3]) == want
               for yy in range(round(y) - reach, round(y) + reach + 1)
               for xx in range(round(x) - reach, round(x) + reach + 1))


def test_png_has_the_size_asked_and_the_segments_where_the_svg_has_them():
    conv = lossy_transfer()
    scene = P.build_scene(conv, LEFT, 800, 500)
    width, height, rows = decode_png(P.render_png(scene))
    assert (width, height) == (800, 500)
    # The first segment (t=0.03, bytes 1-1000) in the data colour, the RTO resend in red.
    assert near(rows, scene.x_of(0.030), scene.y_of(501), P.DATA)
    assert near(rows, scene.x_of(0.300), scene.y_of(7501), P.RETRANS)
    assert not near(rows, scene.x_of(0.200), scene.y_of(7501), P.RETRANS, 5)  # nothing there
    assert near(rows, scene.x_of(0.200), scene.y_of(7001), P.ACK_INK)  # the ACK line's level
    assert near(rows, scene.x_of(0.200), scene.y_of(13001), P.WINDOW_INK)
    # Same geometry as the SVG: one scene, two renderers.
    assert P.plot_png(conv, LEFT, 800, 500) == P.render_png(scene)


def test_text_renders_dark_pixels_inside_its_box_only():
    canvas = Canvas(60, 30)
    canvas.text(5, 4, "Hi 0", "#000000", 2)
    dark = {(x, y) for y in range(30) for x in range(60) if canvas.get(x, y) == (0, 0, 0)}
    assert len(dark) > 40
    assert all(5 <= x < 5 + text_width("Hi 0", 2) and 4 <= y < 18 for x, y in dark)
    # 'H' is lit in both columns of its left edge, the space between words is empty.
    assert (5, 4) in dark and (6, 4) in dark
    assert not any(5 + 2 * 6 * 2 <= x < 5 + 3 * 6 * 2 for x, _ in dark)
    _, _, rows = decode_png(canvas.to_png())
    assert tuple(rows[4][15:18]) == (0, 0, 0) and tuple(rows[0][0:3]) == (255, 255, 255)


def test_font_has_every_printable_ascii_glyph_each_different():
    assert sorted(_GLYPHS) == [chr(c) for c in range(32, 127)]
    assert _GLYPHS[" "] == ()
    shapes = [frozenset(g) for ch, g in _GLYPHS.items() if ch != " "]
    assert all(shapes) and len(set(shapes)) == len(shapes)
    assert all(0 <= x < 5 and 0 <= y < 7 for g in shapes for x, y in g)


def test_lines_of_any_slope_are_connected():
    canvas = Canvas(40, 40)
    canvas.line(2, 3, 30, 37, "#ff0000")
    canvas.line(38, 10, 20, 2, "#00ff00", 2)
    red = [(x, y) for y in range(40) for x in range(40) if canvas.get(x, y) == (255, 0, 0)]
    assert (2, 3) in red and (30, 37) in red and len(red) == 35  # one pixel per row, steep
    green = [(x, y) for y in range(40) for x in range(40) if canvas.get(x, y) == (0, 255, 0)]
    assert len(green) == 2 * 19  # shallow: two pixels tall in each of 19 columns
    assert (20, 2) in green and (20, 3) in green and (38, 10) in green
    canvas.set_clip(0, 0, 10, 10)
    canvas.rect(5, 5, 20, 20, "#0000ff")
    blue = [(x, y) for y in range(40) for x in range(40) if canvas.get(x, y) == (0, 0, 255)]
    assert len(blue) == 25


def test_png_encoder_rejects_a_wrong_size():
    with pytest.raises(ValueError, match="1 bytes of pixels for a 2x2 image"):
        encode_png(2, 2, b"\0")


# ------------------------------------------------------------------ bad input, files, speed


def test_bad_options_are_one_line_errors(tmp_path):
    conv = lossy_transfer()
    with pytest.raises(ValueError, match="direction must be 0"):
        P.plot_svg(conv, 2)
    with pytest.raises(ValueError, match="graph size 10x600 is outside"):
        P.plot_png(conv, LEFT, 10, 600)
    with pytest.raises(ValueError, match="name it .svg or .png"):
        P.write_plot(conv, tmp_path / "graph.jpg")
    P.write_plot(conv, tmp_path / "graph.SVG")
    P.write_plot(conv, tmp_path / "graph.png", width=640, height=480)
    assert ET.parse(tmp_path / "graph.SVG").getroot().tag == SVG + "svg"
    assert decode_png((tmp_path / "graph.png").read_bytes())[:2] == (640, 480)


def test_twenty_thousand_rows_plot_in_seconds():
    conv = bulk(13_332)
    assert len(conv.rows) == 20_000
    started = time.perf_counter()
    svg = P.plot_svg(conv)
    middle = time.perf_counter()
    png = P.plot_png(conv)
    done = time.perf_counter()
    print(f"20000 rows: SVG {middle - started:.2f} s ({len(svg) // 1024} KB),"
          f" PNG {done - middle:.2f} s ({len(png) // 1024} KB)")
    assert svg.count('class="seg') == 13_332
    assert done - started < 30
