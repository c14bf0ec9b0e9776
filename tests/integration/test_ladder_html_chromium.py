"""The HTML ladder as a browser draws it: headless Chromium takes a screenshot, which must not be
blank (many colours, the arrows' blue, dark pixels between the axes). Root is needed only because
Chromium as root runs with --no-sandbox; no network is involved (a file:// page, no requests)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from usertcp.ladder.html import to_html
from usertcp.ladder.model import (
    CLOSE_WAIT,
    CLOSED,
    ESTABLISHED,
    FIN_WAIT_1,
    FIN_WAIT_2,
    LAST_ACK,
    LEFT,
    LOST,
    RETRANSMISSION,
    RIGHT,
    SYN_RECEIVED,
    SYN_SENT,
    TIME_WAIT,
    Conversation,
    Packet,
    Row,
)
from usertcp.ladder.svg import TO_RIGHT_COLOR
from usertcp.wire.tcp import ACK, FIN, PSH, SYN

CHROMIUM_TIMEOUT = 60
WIDTH, HEIGHT = 1200, 900
ENDS = (("10.0.0.1", 40000), ("10.0.0.2", 80))
ISN = (1000, 5000)


def _conversation() -> Conversation:
    steps = [  # ms, sender, flags, rel seq, rel ack, length, states, marks
        (0.0, LEFT, SYN, 0, None, 0, (SYN_SENT, SYN_RECEIVED), ()),
        (1.0, RIGHT, SYN | ACK, 0, 1, 0, (ESTABLISHED, SYN_RECEIVED), ()),
        (2.0, LEFT, ACK, 1, 1, 0, (ESTABLISHED, ESTABLISHED), ()),
        (3.0, LEFT, PSH | ACK, 1, 1, 100, (ESTABLISHED, ESTABLISHED), (LOST,)),
        (200.0, LEFT, PSH | ACK, 1, 1, 100, (ESTABLISHED, ESTABLISHED), (RETRANSMISSION,)),
        (201.0, RIGHT, ACK, 1, 101, 0, (ESTABLISHED, ESTABLISHED), ()),
        (300.0, LEFT, FIN | ACK, 101, 1, 0, (FIN_WAIT_1, CLOSE_WAIT), ()),
        (301.0, RIGHT, FIN | ACK, 1, 102, 0, (FIN_WAIT_2, LAST_ACK), ()),
        (302.0, LEFT, ACK, 102, 2, 0, (TIME_WAIT, CLOSED), ()),
    ]
    rows = []
    for i, (ms, sender, flags, seq, ack, length, states, marks) in enumerate(steps, 1):
        src, dst = ENDS[sender], ENDS[1 - sender]
        packet = Packet(ms / 1000, src[0], src[1], dst[0], dst[1], ISN[sender] + seq,
                        0 if ack is None else ISN[1 - sender] + ack, flags, 65535, length,
                        b"x" * length)
        rows.append(Row(packet, i, sender, ms / 1000, seq, ack, 65535, None, states, marks,
                        delivered=LOST not in marks))
    return Conversation(ENDS, rows=rows, isn=ISN)


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.path.exists("/usr/bin/chromium"):
        found = "/usr/bin/chromium"
    if found is None:
        # under CI=true the suite's conftest turns this skip into a failure
        pytest.skip("chromium is not installed (Debian/Ubuntu: apt-get install chromium)")
    return found


@contextlib.contextmanager
def _public_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="usertcp-ladder-html-"))
    try:
        path.chmod(0o755)  # readable by everyone: Chromium may drop privileges to read it
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _screenshot(chromium: str, page: Path, out: Path, profile: Path) -> None:
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--no-first-run", "--disable-extensions", "--disable-sync",
           "--disable-background-networking", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", f"--screenshot={out}",
           f"--window-size={WIDTH},{HEIGHT}", page.as_uri()]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "HOME": str(profile)})
    try:
        output, _ = proc.communicate(timeout=CHROMIUM_TIMEOUT)
    except subprocess.TimeoutExpired:
        output = b""
        pytest.fail(f"chromium took more than {CHROMIUM_TIMEOUT} s")
    finally:
        # Its own session: the group id is the PID we started; helpers it forked go with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 0, output.decode(errors="replace")[-2000:]
    assert out.exists(), output.decode(errors="replace")[-2000:]


# ------------------------------------------------------------------------------ PNG, by hand


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def decode_png(data: bytes) -> tuple[int, int, int, bytes]:
    """(width, height, bytes per pixel, raw pixels) of an 8-bit RGB or RGBA, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, bytearray(), None
    while pos < len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    assert header is not None, "no IHDR"
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, header
    bpp = 3 if color == 2 else 4
    stride = width * bpp
    raw = zlib.decompress(bytes(idat))
    out = bytearray(stride * height)
    prev = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                up_left = prev[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + _paeth(left, prev[i], up_left)) & 0xFF
        else:
            assert kind == 0, f"filter type {kind}"
        out[y * stride:(y + 1) * stride] = line
        prev = line
    return width, height, bpp, bytes(out)


def test_chromium_draws_the_ladder() -> None:
    chromium = _chromium()
    with _public_dir() as where:
        page = where / "ladder.html"
        page.write_text(to_html(_conversation()), encoding="utf-8")
        page.chmod(0o644)
        shot = where / "ladder.png"
        profile = where / "profile"
        profile.mkdir()
        _screenshot(chromium, page, shot, profile)
        width, height, bpp, pixels = decode_png(shot.read_bytes())

    assert (width, height) == (WIDTH, HEIGHT)

    def rgb(x: int, y: int) -> tuple[int, int, int]:
        i = (y * width + x) * bpp
        return pixels[i], pixels[i + 1], pixels[i + 2]

    colours = {rgb(x, y) for y in range(0, height, 2) for x in range(0, width, 2)}
    assert len(colours) >= 50, f"only {len(colours)} colours: a blank page?"

    # The axes: columns where a long run of dark pixels goes down.
    axis_columns = []
    for x in range(width):
        dark = sum(1 for y in range(height) if sum(rgb(x, y)) < 3 * 140)
        if dark >= 250:
            axis_columns.append(x)
    assert axis_columns, "no vertical axis drawn"
    left_axis, right_axis = min(axis_columns), max(axis_columns)
    assert right_axis - left_axis >= 400, (left_axis, right_axis)

    # Between them: the arrows, dark pixels and the blue of those going right.
    target = tuple(int(TO_RIGHT_COLOR[i:i + 2], 16) for i in (1, 3, 5))
    dark = blue = 0
    for y in range(height):
        for x in range(left_axis + 5, right_axis - 5, 2):
            r, g, b = rgb(x, y)
            if r + g + b < 3 * 160:
                dark += 1
            if abs(r - target[0]) + abs(g - target[1]) + abs(b - target[2]) < 60:
                blue += 1
    assert dark >= 1000, dark
    assert blue >= 200, blue
