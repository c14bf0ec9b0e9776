"""A tiny RGB rasterizer: lines, filled rectangles, markers, bitmap text, and PNG encoding.

Pure Python and no dependency, so a graph can be drawn on a server without a display or an
imaging library. Coordinates are pixels, (0, 0) top left; colours are "#rrggbb" or (r, g, b).
"""

from __future__ import annotations

import struct
import zlib

Color = str | tuple[int, int, int]

# The font: ASCII 32-126 in order, 16 glyphs a band, each glyph 5 columns by 7 rows, bands
# separated by a blank line. A character cell is 6 by 8 pixels at scale 1 (one pixel of spacing).
_FONT_BANDS = """\
..... ..#.. .#.#. .#.#. ..#.. ##... .##.. ..#.. ...#. .#... ..... ..... ..... ..... ..... .....
..... ..#.. .#.#. .#.#. .#### ##..# #..#. ..#.. ..#.. ..#.. ..#.. ..#.. ..... ..... ..... ....#
..... ..#.. ..... ##### #.#.. ...#. #.#.. ..... .#... ...#. #.#.# ..#.. ..... ..... ..... ...#.
..... ..#.. ..... .#.#. .###. ..#.. .#... ..... .#... ...#. .###. ##### ..... ##### ..... ..#..
..... ..#.. ..... ##### ..#.# .#... #.#.# ..... .#... ...#. #.#.# ..#.. .##.. ..... ..... .#...
..... ..... ..... .#.#. ####. #..## #..#. ..... ..#.. ..#.. ..#.. ..#.. ..#.. ..... .##.. #....
..... ..#.. ..... .#.#. ..#.. ...## .##.# ..... ...#. .#... ..... ..... .#... ..... .##.. .....

.###. ..#.. .###. ##### ...#. ##### ..##. ##### .###. .###. ..... ..... ...#. ..... .#... .###.
#...# .##.. #...# ...#. ..##. #.... .#... ....# #...# #...# .##.. .##.. ..#.. ..... ..#.. #...#
#..## ..#.. ....# ..#.. .#.#. ####. #.... ...#. #...# #...# .##.. .##.. .#... ##### ...#. ....#
#.#.# ..#.. ...#. ...#. #..#. ....# ####. ..#.. .###. .#### ..... ..... #.... ..... ....# ...#.
##..# ..#.. ..#.. ....# ##### ....# #...# .#... #...# ....# .##.. .##.. .#... ##### ...#. ..#..
#...# ..#.. .#... #...# ...#. #...# #...# .#... #...# ...#. .##.. ..#.. ..#.. ..... ..#.. .....
.###. .###. ##### .###. ...#. .###. .###. .#... .###. .##.. ..... .#... ...#. ..... .#... ..#..

.###. .###. ####. .###. ###.. ##### ##### .###. #...# .###. ..### #...# #.... #...# #...# .###.
#...# #...# #...# #...# #..#. #.... #.... #...# #...# ..#.. ...#. #..#. #.... ##.## #...# #...#
....# #...# #...# #.... #...# #.... #.... #.... #...# ..#.. ...#. #.#.. #.... #.#.# ##..# #...#
.##.# ##### ####. #.... #...# ####. ####. #.### ##### ..#.. ...#. ##... #.... #.#.# #.#.# #...#
#.#.# #...# #...# #.... #...# #.... #.... #...# #...# ..#.. ...#. #.#.. #.... #...# #..## #...#
#.#.# #...# #...# #...# #..#. #.... #.... #...# #...# ..#.. #..#. #..#. #.... #...# #...# #...#
.###. #...# ####. .###. ###.. ##### #.... .#### #...# .###. .##.. #...# ##### #...# #...# .###.

####. .###. ####. .#### ##### #...# #...# #...# #...# #...# ##### .###. ..... .###. ..#.. .....
#...# #...# #...# #.... ..#.. #...# #...# #...# #...# #...# ....# .#... #.... ...#. .#.#. .....
#...# #...# #...# #.... ..#.. #...# #...# #...# .#.#. .#.#. ...#. .#... .#... ...#. #...# .....
####. #...# ####. .###. ..#.. #...# #...# #.#.# ..#.. ..#.. ..#.. .#... ..#.. ...#. ..... .....
#.... #.#.# #.#.. ....# ..#.. #...# #...# #.#.# .#.#. ..#.. .#... .#... ...#. ...#. ..... .....
#.... #..#. #..#. ....# ..#.. #...# .#.#. #.#.# #...# ..#.. #.... .#... ....# ...#. ..... .....
#.... .##.# #...# ####. ..#.. .###. ..#.. .#.#. #...# ..#.. ##### .###. ..... .###. ..... #####

.#... ..... #.... ..... ....# ..... ..##. ..... #.... ..#.. ...#. #.... .##.. ..... ..... .....
..#.. ..... #.... ..... ....# ..... .#..# ..... #.... ..... ..... #.... ..#.. ..... ..... .....
..... .###. #.##. .###. .##.# .###. .#... .#### #.##. .##.. ..##. #..#. ..#.. ##.#. #.##. .###.
..... ....# ##..# #.... #..## #...# ###.. #...# ##..# ..#.. ...#. #.#.. ..#.. #.#.# ##..# #...#
..... .#### #...# #.... #...# ##### .#... .#### #...# ..#.. ...#. ##... ..#.. #.#.# #...# #...#
..... #...# #...# #...# #...# #.... .#... ....# #...# ..#.. #..#. #.#.. ..#.. #...# #...# #...#
..... .#### ####. .###. .#### .###. .#... .###. #...# .###. .##.. #..#. .###. #...# #...# .###.

..... ..... ..... ..... .#... ..... ..... ..... ..... ..... ..... ...#. ..#.. .#... .....
..... ..... ..... ..... .#... ..... ..... ..... ..... ..... ..... ..#.. ..#.. ..#.. .....
####. .#### #.##. .#### ###.. #...# #...# #...# #...# #...# ##### ..#.. ..#.. ..#.. .#...
#...# #...# ##..# #.... .#... #...# #...# #...# .#.#. #...# ...#. .#... ..#.. ...#. #.#.#
####. .#### #.... .###. .#... #...# #...# #.#.# ..#.. .#### ..#.. ..#.. ..#.. ..#.. ...#.
#.... ....# #.... ....# .#..# #..## .#.#. #.#.# .#.#. ....# .#... ..#.. ..#.. ..#.. .....
#.... ....# #.... ####. ..##. .##.# ..#.. .#.#. #...# .###. ##### ...#. ..#.. .#... .....
"""

GLYPH_WIDTH, GLYPH_HEIGHT = 5, 7
ADVANCE = GLYPH_WIDTH + 1  # pixels from one character to the next, at scale 1
LINE_HEIGHT = GLYPH_HEIGHT + 3


def _parse_font(bands: str) -> dict[str, tuple[tuple[int, int], ...]]:
    """Each character to the (column, row) offsets of its lit pixels."""
    lines = [line for line in bands.splitlines() if line]
    glyphs: dict[str, tuple[tuple[int, int], ...]] = {}
    code = 32
    for top in range(0, len(lines), GLYPH_HEIGHT):
        band = [line.split(" ") for line in lines[top:top + GLYPH_HEIGHT]]
        for column in range(len(band[0])):
            glyphs[chr(code)] = tuple(
                (x, y) for y in range(GLYPH_HEIGHT) for x, bit in enumerate(band[y][column])
                if bit == "#")
            code += 1
    return glyphs


_GLYPHS = _parse_font(_FONT_BANDS)


def text_width(text: str, scale: int = 1) -> int:
    """Pixels the text takes across (without the spacing after the last character)."""
    return max(0, len(text) * ADVANCE - 1) * scale


def text_height(scale: int = 1) -> int:
    return GLYPH_HEIGHT * scale


def rgb(color: Color) -> tuple[int, int, int]:
    """'#1f4e9c' or (31, 78, 156) -> (31, 78, 156)."""
    if isinstance(color, tuple):
        return color
    if len(color) != 7 or color[0] != "#":
        raise ValueError(f"colour {color!r} is not #rrggbb")
    return (int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(width: int, height: int, pixels: bytes | bytearray) -> bytes:
    """An 8-bit RGB PNG of `pixels` (3 bytes a pixel, rows top to bottom)."""
    stride = width * 3
    if len(pixels) != stride * height:
        raise ValueError(f"{len(pixels)} bytes of pixels for a {width}x{height} image")
    raw = bytearray()
    previous = bytes(stride)
    for y in range(height):
        row = bytes(pixels[y * stride:(y + 1) * stride])
        # Filter "Up" when the row repeats the one above (backgrounds, grid): compresses best.
        if row == previous:
            raw += b"\x02" + bytes(stride)
        else:
            raw += b"\x00" + row
        previous = row
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(bytes(raw), 6)) + _chunk(b"IEND", b""))


class Canvas:
    """An RGB image being drawn on; everything outside the clip rectangle is left alone."""

    def __init__(self, width: int, height: int, background: Color = "#ffffff") -> None:
        if width < 1 or height < 1:
            raise ValueError(f"image size {width}x{height} is not positive")
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(rgb(background)) * (width * height))
        self.clip = (0, 0, width, height)

    def set_clip(self, x0: int, y0: int, x1: int, y1: int) -> None:
        """Draw only inside [x0, x1) x [y0, y1), itself cut to the image."""
        self.clip = (max(0, x0), max(0, y0), min(self.width, x1), min(self.height, y1))

    def reset_clip(self) -> None:
        self.clip = (0, 0, self.width, self.height)

    def get(self, x: int, y: int) -> tuple[int, int, int]:
        i = (y * self.width + x) * 3
        return (self.pixels[i], self.pixels[i + 1], self.pixels[i + 2])

    def pixel(self, x: int, y: int, color: Color) -> None:
        cx0, cy0, cx1, cy1 = self.clip
        if cx0 <= x < cx1 and cy0 <= y < cy1:
            i = (y * self.width + x) * 3
            self.pixels[i:i + 3] = bytes(rgb(color))

    def hline(self, x0: int, x1: int, y: int, color: Color) -> None:
        """Pixels x0..x1 (both included) of row y."""
        cx0, cy0, cx1, cy1 = self.clip
        if not cy0 <= y < cy1:
            return
        x0, x1 = max(min(x0, x1), cx0), min(max(x0, x1), cx1 - 1)
        if x0 > x1:
            return
        start = (y * self.width + x0) * 3
        self.pixels[start:start + (x1 - x0 + 1) * 3] = bytes(rgb(color)) * (x1 - x0 + 1)

    def vline(self, x: int, y0: int, y1: int, color: Color) -> None:
        """Pixels y0..y1 (both included) of column x."""
        cx0, cy0, cx1, cy1 = self.clip
        if not cx0 <= x < cx1:
            return
        y0, y1 = max(min(y0, y1), cy0), min(max(y0, y1), cy1 - 1)
        if y0 > y1:
            return
        stride = self.width * 3
        start = (y0 * self.width + x) * 3
        stop = start + (y1 - y0) * stride + 1
        count = y1 - y0 + 1
        for channel, value in enumerate(rgb(color)):
            self.pixels[start + channel:stop + channel:stride] = bytes((value,)) * count

    def rect(self, x: int, y: int, w: int, h: int, color: Color) -> None:
        """A filled rectangle, w by h pixels from (x, y)."""
        for row in range(y, y + h):
            self.hline(x, x + w - 1, row, color)

    def line(self, x0: float, y0: float, x1: float, y1: float, color: Color,
             width: int = 1) -> None:
        """A straight line of any slope, 1 or 2 pixels wide."""
        ax, ay, bx, by = round(x0), round(y0), round(x1), round(y1)
        steep = abs(by - ay) > abs(bx - ax)
        for offset in range(max(1, min(width, 2))):
            # The second pixel of a wide line goes across the line's main direction.
            if steep:
                self._segment(ax + offset, ay, bx + offset, by, color)
            else:
                self._segment(ax, ay + offset, bx, by + offset, color)

    def _segment(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        if x0 == x1:
            self.vline(x0, y0, y1, color)
            return
        if y0 == y1:
            self.hline(x0, x1, y0, color)
            return
        # Bresenham, every octant.
        value = rgb(color)
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        for _ in range(dx - dy + 1):
            self.pixel(x0, y0, value)
            if x0 == x1 and y0 == y1:
                break
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def marker(self, kind: str, x: float, y: float, color: Color, size: int = 3) -> None:
        """A small shape centred on (x, y): disc, ring, cross, diamond, tick, vtick, triangle."""
        cx, cy, r = round(x), round(y), size
        if kind == "disc":
            for dy in range(-r, r + 1):
                half = int((r * r - dy * dy) ** 0.5 + 0.5)
                self.hline(cx - half, cx + half, cy + dy, color)
        elif kind == "ring":
            for dy in range(-r, r + 1):
                for dx in range(-r, r + 1):
                    if (r - 1) ** 2 < dx * dx + dy * dy <= (r + 0.5) ** 2:
                        self.pixel(cx + dx, cy + dy, color)
        elif kind == "cross":
            self.line(cx - r, cy - r, cx + r, cy + r, color, 2)
            self.line(cx - r, cy + r, cx + r, cy - r, color, 2)
        elif kind == "diamond":
            for dy in range(-r, r + 1):
                self.hline(cx - (r - abs(dy)), cx + (r - abs(dy)), cy + dy, color)
        elif kind == "tick":
            self.hline(cx - r, cx + r, cy, color)
        elif kind == "vtick":
            self.vline(cx, cy - r, cy + r, color)
            self.vline(cx + 1, cy - r, cy + r, color)
        elif kind == "triangle":  # pointing down at (x, y)
            for dy in range(r + 1):
                self.hline(cx - dy, cx + dy, cy - dy, color)
        else:
            raise ValueError(f"unknown marker {kind!r}")

    def text(self, x: float, y: float, text: str, color: Color, scale: int = 1) -> None:
        """ASCII text with its top-left corner at (x, y); other characters show as '?'."""
        value = rgb(color)
        left, top = round(x), round(y)
        for n, ch in enumerate(text):
            glyph = _GLYPHS.get(ch, _GLYPHS["?"])
            ox = left + n * ADVANCE * scale
            for gx, gy in glyph:
                if scale == 1:
                    self.pixel(ox + gx, top + gy, value)
                else:
                    self.rect(ox + gx * scale, top + gy * scale, scale, scale, value)

    def to_png(self) -> bytes:
        return encode_png(self.width, self.height, self.pixels)
