"""Drawing a Conversation: text (whole lines), SVG, HTML and Mermaid, from hand-made rows."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from usertcp.ladder.html import to_html
from usertcp.ladder.mermaid import mermaid_text, to_mermaid
from usertcp.ladder.model import (
    CLOSE_WAIT,
    CLOSED,
    DUP_ACK,
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
    Conversation,
    Packet,
    Row,
)
from usertcp.ladder.svg import LOST_COLOR, RESET_COLOR, RETRANSMISSION_COLOR, to_svg
from usertcp.ladder.text import Style, TextLadder, cells, render_text
from usertcp.wire.tcp import ACK, FIN, PSH, RST, SYN

X, Y = 1000, 5000  # the ISNs
SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = b'<script>alert(1)</script> ]]> "&amp; \x1b[31m \xe6\x97\xa5\xe6\x9c\xac'


class Builder:
    """Rows by hand: relative numbers given, absolute ones derived from the ISNs."""

    def __init__(self, left=("10.0.0.1", 40000), right=("10.0.0.2", 80), isn=(X, Y)):
        self.ends = (left, right)
        self.isn = isn
        self.rows: list[Row] = []

    def add(self, ms, sender, flags, seq, ack=None, *, states, length=0, payload=b"",
            window=65535, shift=None, marks=(), delivered=True, why="", rel=True, **opts):
        src, dst = self.ends[sender], self.ends[1 - sender]
        mine, theirs = self.isn[sender], self.isn[1 - sender]
        known_seq, known_ack = rel and mine is not None, rel and theirs is not None
        abs_seq = mine + seq if known_seq else seq
        abs_ack = 0 if ack is None else theirs + ack if known_ack else ack
        packet = Packet(ms / 1000, src[0], src[1], dst[0], dst[1], abs_seq, abs_ack,
                        flags | (ACK if ack is not None else 0), window, length, payload,
                        ip_version=6 if ":" in src[0] else 4, **opts)
        self.rows.append(Row(
            packet, len(self.rows) + 1, sender, ms / 1000, seq if known_seq else None,
            ack if ack is not None and known_ack else None,
            window << shift if shift else window, shift, states, tuple(marks), delivered, why))
        return self

    def conversation(self, initial=(CLOSED, LISTEN)) -> Conversation:
        return Conversation(self.ends, ("client", "server"), initial, self.rows, self.isn)


SYN_OPTS = {"mss": 1460, "sack_permitted": True, "ts_val": 1, "ts_ecr": 0, "wscale": 7}


def _opening(b: Builder) -> Builder:
    """Handshake, 5 bytes and their ACK, the client's close, the server's FIN."""
    b.add(0.0, LEFT, SYN, 0, states=(SYN_SENT, SYN_RECEIVED), window=64240, **SYN_OPTS)
    b.add(1.2, RIGHT, SYN, 0, 1, states=(ESTABLISHED, SYN_RECEIVED), **SYN_OPTS)
    b.add(2.1, LEFT, 0, 1, 1, states=(ESTABLISHED, ESTABLISHED), window=502, shift=7)
    b.add(10.0, LEFT, PSH, 1, 1, states=(ESTABLISHED, ESTABLISHED), window=502, shift=7,
          length=5, payload=b"hello")
    b.add(10.5, RIGHT, 0, 1, 6, states=(ESTABLISHED, ESTABLISHED), window=512, shift=7)
    b.add(20.0, LEFT, FIN, 6, 1, states=(FIN_WAIT_1, CLOSE_WAIT), window=502, shift=7)
    b.add(20.4, RIGHT, 0, 1, 7, states=(FIN_WAIT_2, CLOSE_WAIT), window=512, shift=7)
    b.add(30.0, RIGHT, FIN, 1, 7, states=(FIN_WAIT_2, LAST_ACK), window=512, shift=7)
    return b


def normal(builder: Builder | None = None) -> Conversation:
    b = _opening(builder or Builder())
    b.add(30.3, LEFT, 0, 7, 2, states=(TIME_WAIT, CLOSED), window=502, shift=7)
    return b.conversation()


def lost_final_ack() -> Conversation:
    b = _opening(Builder())
    b.add(30.3, LEFT, 0, 7, 2, states=(TIME_WAIT, LAST_ACK), window=502, shift=7,
          marks=(LOST,), delivered=False, why="server sent its FIN again: this ACK never arrived")
    b.add(230.0, RIGHT, FIN, 1, 7, states=(TIME_WAIT, LAST_ACK), window=512, shift=7,
          marks=(RETRANSMISSION,))
    b.add(230.2, LEFT, 0, 7, 2, states=(TIME_WAIT, CLOSED), window=502, shift=7)
    return b.conversation()


def refused() -> Conversation:
    b = Builder(isn=(X, None))
    b.add(0.0, LEFT, SYN, 0, states=(SYN_SENT, CLOSED), window=64240, **SYN_OPTS)
    b.add(0.1, RIGHT, RST, 0, 1, states=(CLOSED, CLOSED), window=0, marks=(RESET,),
          why="refused: nothing listens on port 80")
    return b.conversation(initial=(CLOSED, CLOSED))


def ipv6() -> Conversation:
    return normal(Builder(left=("fd00::1", 40000), right=("fd00::2", 80)))


def hostile() -> Conversation:
    b = _opening(Builder())
    b.add(31.0, RIGHT, PSH, 2, 7, states=(FIN_WAIT_2, LAST_ACK), length=len(HOSTILE),
          payload=HOSTILE, window=512, shift=7, marks=(DUP_ACK,),
          why='why: <b>"&</b> ]]> \x1b[2J ' + "long " * 30)
    b.add(12_345_678.9, LEFT, RST, 7, states=(CLOSED, LAST_ACK), window=0, marks=(RESET,))
    return b.conversation()


ALL = {"normal": normal, "lost_final_ack": lost_final_ack, "refused": refused, "ipv6": ipv6,
       "hostile": hostile}

# ---------------------------------------------------------------------------------- text

NORMAL_TEXT = """\
              client 10.0.0.1:40000                               server 10.0.0.2:80
       ms        CLOSED │                                                  │ LISTEN
      0.0      SYN-SENT │── SYN  seq=0 ───────────────────────────────────▶│ SYN-RECEIVED
                        │   seq x = 1000                                   │
                        │   win 64240 · mss 1460 · sackOK · TS · wscale 7  │
      1.2   ESTABLISHED │◀── SYN-ACK  seq=0  ack=1 ────────────────────────│ SYN-RECEIVED
                        │   seq y = 5000, ack x+1 = 1001                   │
                        │   win 65535 · mss 1460 · sackOK · TS · wscale 7  │
      2.1   ESTABLISHED │── ACK  seq=1  ack=1 ────────────────────────────▶│ ESTABLISHED
                        │   seq x+1 = 1001, ack y+1 = 5001                 │
                        │   win 64256 (502 << 7)                           │
     10.0   ESTABLISHED │── PSH-ACK  seq=1  ack=1  len=5 ─────────────────▶│ ESTABLISHED
                        │   seq x+1 = 1001, ack y+1 = 5001                 │
                        │   win 64256 (502 << 7)                           │
                        │   5 bytes "hello"                                │
     10.5   ESTABLISHED │◀── ACK  seq=1  ack=6 ────────────────────────────│ ESTABLISHED
                        │   seq y+1 = 5001, ack x+6 = 1006                 │
                        │   win 65536 (512 << 7)                           │
     20.0    FIN-WAIT-1 │── FIN-ACK  seq=6  ack=1 ────────────────────────▶│ CLOSE-WAIT
                        │   seq x+6 = 1006, ack y+1 = 5001                 │
                        │   win 64256 (502 << 7)                           │
     20.4    FIN-WAIT-2 │◀── ACK  seq=1  ack=7 ────────────────────────────│ CLOSE-WAIT
                        │   seq y+1 = 5001, ack x+7 = 1007                 │
                        │   win 65536 (512 << 7)                           │
     30.0    FIN-WAIT-2 │◀── FIN-ACK  seq=1  ack=7 ────────────────────────│ LAST-ACK
                        │   seq y+1 = 5001, ack x+7 = 1007                 │
                        │   win 65536 (512 << 7)                           │
     30.3     TIME-WAIT │── ACK  seq=7  ack=2 ────────────────────────────▶│ CLOSED
                        │   seq x+7 = 1007, ack y+2 = 5002                 │
                        │   win 64256 (502 << 7)                           │
"""

# tests/integration/test_demo.py's pattern for an arrow line, with the sides renamed
DEMO_ROW = re.compile(
    r"^\s*(?P<ms>\d+\.\d)\s+(?P<left>[A-Z0-9-]+) │(?P<arrow>◀──|──) (?P<flags>[A-Z-]+)"
    r"  seq=(?P<seq>\d+)(?:  ack=(?P<ack>\d+))?(?:  len=(?P<len>\d+))? ─*▶?│ (?P<right>[A-Z0-9-]+)$"
)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_normal_connection_whole_text() -> None:
    assert render_text(normal()) == NORMAL_TEXT


def test_arrow_lines_keep_the_demo_pattern() -> None:
    rows = [m.groupdict() for m in map(DEMO_ROW.match, render_text(normal()).splitlines()) if m]
    assert [(r["flags"], r["seq"], r["ack"], r["len"]) for r in rows] == [
        ("SYN", "0", None, None), ("SYN-ACK", "0", "1", None), ("ACK", "1", "1", None),
        ("PSH-ACK", "1", "1", "5"), ("ACK", "1", "6", None), ("FIN-ACK", "6", "1", None),
        ("ACK", "1", "7", None), ("FIN-ACK", "1", "7", None), ("ACK", "7", "2", None)]
    assert [r["arrow"] for r in rows] == ["──", "◀──", "──", "──", "◀──", "──", "◀──", "◀──", "──"]
    assert rows[-1]["left"] == TIME_WAIT and rows[-1]["right"] == CLOSED


def test_lost_final_ack_ends_in_a_cross_short_of_the_server() -> None:
    lines = render_text(lost_final_ack()).splitlines()
    assert lines[27:35] == [
        "     30.3     TIME-WAIT │── ACK  seq=7  ack=2  [lost] ─────────────────✕   │ LAST-ACK",
        "                        │   seq x+7 = 1007, ack y+2 = 5002                 │",
        "                        │   win 64256 (502 << 7)                           │",
        "                        │   server sent its FIN again: this ACK never      │",
        "                        │   arrived                                        │",
        "    230.0     TIME-WAIT │◀── FIN-ACK  seq=1  ack=7  [retransmission] ──────│ LAST-ACK",
        "                        │   seq y+1 = 5001, ack x+7 = 1007                 │",
        "                        │   win 65536 (512 << 7)                           │",
    ]
    assert lines[35] == ("    230.2     TIME-WAIT │── ACK  seq=7  ack=2 ──────────────────"
                         "──────────▶│ CLOSED")


def test_lost_packet_to_the_left_and_marks_in_model_order() -> None:
    b = Builder()
    b.add(0.0, LEFT, SYN, 0, states=(SYN_SENT, SYN_RECEIVED))
    b.add(5.0, RIGHT, SYN, 0, 1, states=(SYN_SENT, SYN_RECEIVED), marks=(DUP_ACK, LOST),
          delivered=False)
    lines = render_text(b.conversation()).splitlines()
    assert lines[5] == ("      5.0      SYN-SENT │   ✕── SYN-ACK  seq=0  ack=1  [lost, dup-ack] "
                        "────│ SYN-RECEIVED")


def test_refused_syn_shows_the_absolute_seq_of_the_reset() -> None:
    assert render_text(refused()).splitlines()[5:9] == [
        "      0.1        CLOSED │◀── RST-ACK  seq=0  ack=1  [reset] ───────────────│ CLOSED",
        "                        │   seq 0, ack x+1 = 1001                          │",
        "                        │   win 0                                          │",
        "                        │   refused: nothing listens on port 80            │",
    ]


def test_ipv6_titles() -> None:
    first = render_text(ipv6()).splitlines()[0]
    assert first == ("             client [fd00::1]:40000                               "
                     "server [fd00::2]:80")


def test_ascii_fallback() -> None:
    text = render_text(lost_final_ack(), Style(color=False, unicode=False))
    assert text.isascii()
    lines = text.splitlines()
    assert lines[2] == ("      0.0      SYN-SENT |-- SYN  seq=0 -----------------------------------"
                        ">| SYN-RECEIVED")
    assert lines[4] == ("                        |   win 64240 - mss 1460 - sackOK - TS - wscale 7 "
                        " |")
    assert lines[27] == ("     30.3     TIME-WAIT |-- ACK  seq=7  ack=2  [lost] -----------------x"
                         "   | LAST-ACK")
    assert lines[30] == ("                        |   server sent its FIN again: this ACK never  "
                         "    |")
    assert lines[31] == ("                        |   arrived                                    "
                         "    |")
    assert lines[32].startswith("    230.0     TIME-WAIT |<-- FIN-ACK  seq=1  ack=7  [retrans")


def test_colours_only_add_escapes() -> None:
    conv = lost_final_ack()
    coloured = render_text(conv, Style(color=True))
    assert ANSI.sub("", coloured) == render_text(conv)
    lines = coloured.splitlines()
    assert "\x1b[36m" in lines[2] and "\x1b[35m" not in lines[2]  # → cyan
    assert "\x1b[35m" in lines[5] and "\x1b[36m" not in lines[5]  # ← magenta
    assert "\x1b[31m✕" in lines[27]  # a red cross
    assert "\x1b[32m" in lines[5] and "\x1b[32m" not in lines[8].split("│")[0]  # changes only


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("unicode", [True, False])
def test_layout_never_breaks(name: str, unicode: bool) -> None:
    style = Style(color=False, unicode=unicode)
    lines = render_text(ALL[name](), style).splitlines()
    axis = style.axis
    columns = set()
    for line in lines[1:]:
        first = line.index(axis)
        second = line.index(axis, first + 1)
        columns.add((cells(line[:first]), cells(line[:second])))
        assert line[second:] == axis or line[second:].startswith(axis + " ")
        assert "\x1b" not in line and line.isprintable()
    assert len(columns) == 1, columns


def test_long_times_widen_the_time_column() -> None:
    lines = render_text(hostile()).splitlines()
    last = next(line for line in lines if "RST" in line)
    assert last == ("12345678.9        CLOSED │── RST  seq=7  [reset] ──────────────────────────▶│"
                    " LAST-ACK")
    assert lines[1] == "        ms        CLOSED │                                                  │ LISTEN"
    assert lines[2].startswith("       0.0      SYN-SENT │── SYN  seq=0 ")


def test_hostile_payload_is_escaped_in_text() -> None:
    text = render_text(hostile())
    lines = text.splitlines()
    assert lines[30:32] == [
        '                         │   49 bytes "<script>alert(1)</script> ]]> "…     │',
        "                         │   why: <b>\"&</b> ]]> ?[2J long long long long    │"]
    assert lines[33] == "                         │   long long long long long long long long long … │"
    assert "\x1b" not in text


def test_live_ladder_learns_isns_and_notes() -> None:
    lines: list[str] = []
    ladder = TextLadder(lines.append, Style(color=False), endpoints=(("10.7.0.1", 41234),
                        ("10.7.0.2", 7)), names=("kernel", "usertcp"), initial=(CLOSED, LISTEN))
    ladder.header()
    ladder.note("connect(10.7.0.2:7)", LEFT)
    b = Builder(left=("10.7.0.1", 41234), right=("10.7.0.2", 7))
    b.add(0.0, LEFT, SYN, X, states=(SYN_SENT, SYN_RECEIVED), rel=False)
    b.add(1.0, RIGHT, SYN, Y, X + 1, states=(SYN_SENT, SYN_RECEIVED), rel=False)
    ladder.row(b.rows[0])
    ladder.set_isn(LEFT, X)
    ladder.set_isn(RIGHT, Y)
    ladder.row(b.rows[1])
    ladder.note("write(15 bytes)", RIGHT)
    assert lines == [
        "              kernel 10.7.0.1:41234                               usertcp 10.7.0.2:7",
        "       ms        CLOSED │                                                  │ LISTEN",
        "                        │  connect(10.7.0.2:7)                             │",
        "      0.0      SYN-SENT │── SYN  seq=1000 ────────────────────────────────▶│ SYN-RECEIVED",
        "                        │   seq 1000                                       │",
        "                        │   win 65535                                      │",
        "      1.0      SYN-SENT │◀── SYN-ACK  seq=0  ack=1 ────────────────────────│ SYN-RECEIVED",
        "                        │   seq y = 5000, ack x+1 = 1001                   │",
        "                        │   win 65535                                      │",
        "                        │                                 write(15 bytes)  │",
    ]


# ---------------------------------------------------------------------------------- SVG


def _svg(conv: Conversation) -> ET.Element:
    return ET.fromstring(to_svg(conv))


@pytest.mark.parametrize("name", sorted(ALL))
def test_svg_has_one_packet_group_per_row(name: str) -> None:
    conv = ALL[name]()
    root = _svg(conv)
    assert root.tag == SVG + "svg"
    width, height = int(root.get("width")), int(root.get("height"))
    assert root.get("viewBox") == f"0 0 {width} {height}"
    groups = [g for g in root.iter(SVG + "g") if g.get("class") == "packet"]
    assert [int(g.get("data-index")) for g in groups] == [r.index for r in conv.rows]
    for g in groups:
        assert len(g.findall(SVG + "line")) == 1
    # nothing from outside: no links, no scripts, no stylesheets, generic fonts only
    for element in root.iter():
        assert element.tag not in (SVG + "script", SVG + "a", SVG + "image", SVG + "style")
        assert not any("href" in key for key in element.attrib)
        assert element.get("font-family") in (None, "monospace", "sans-serif")


def test_svg_lost_retransmitted_and_reset_rows() -> None:
    root = _svg(lost_final_ack())
    groups = {int(g.get("data-index")): g for g in root.iter(SVG + "g")
              if g.get("class") == "packet"}
    lost = groups[9]
    cross = lost.find(SVG + "path")
    assert cross is not None and cross.get("class") == "lost"
    assert cross.get("stroke") == LOST_COLOR
    left_axis, right_axis = (float(a.get("x1")) for a in root.iter(SVG + "line")
                             if a.get("class") == "axis")
    line = lost.find(SVG + "line")
    assert float(line.get("x1")) == left_axis
    assert float(line.get("x2")) == (left_axis + right_axis) / 2  # ends halfway
    assert line.get("stroke-dasharray")
    assert lost.find(SVG + "polygon") is None
    assert lost.get("data-marks") == "lost"
    assert groups[10].find(SVG + "line").get("stroke") == RETRANSMISSION_COLOR
    assert "[retransmission]" in groups[10].find(SVG + "text").text
    rst = {int(g.get("data-index")): g for g in _svg(refused()).iter(SVG + "g")
           if g.get("class") == "packet"}[2]
    assert rst.find(SVG + "line").get("stroke") == RESET_COLOR
    assert rst.find(SVG + "text").text == "RST-ACK seq=0 ack=1 [reset]"


def test_svg_states_and_labels() -> None:
    root = _svg(ipv6())
    texts = [t.text for t in root.iter(SVG + "text")]
    assert "[fd00::1]:40000" in texts and "[fd00::2]:80" in texts
    states = [t.text for t in root.iter(SVG + "text") if t.get("class") == "state"]
    # the initial states, then each change once per side
    assert states == [CLOSED, LISTEN, SYN_SENT, SYN_RECEIVED, ESTABLISHED, ESTABLISHED,
                      FIN_WAIT_1, CLOSE_WAIT, FIN_WAIT_2, LAST_ACK, TIME_WAIT, CLOSED]


def test_svg_escapes_hostile_text() -> None:
    source = to_svg(hostile())
    assert "<script" not in source and "]]>" not in source
    root = ET.fromstring(source)
    titles = [t.text for t in root.iter(SVG + "title")]
    assert any('"<script>alert(1)</script> ]]> \\"&amp;' in t for t in titles)
    assert any('why: <b>"&</b> ]]>' in t for t in titles)


# ---------------------------------------------------------------------------------- HTML

VOID = {"meta", "br", "hr", "img", "input", "link", "area", "base", "col", "embed", "source",
        "track", "wbr"}


class _Checker(HTMLParser):
    """Collects tags, checks every element is closed in order, and gathers table cells."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self.rows.append([])
        if tag == "td":
            self._cell = []
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> while open: {self.stack[-3:]}")
            return
        self.stack.pop()
        if tag == "td" and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _check_html(page: str) -> _Checker:
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.errors == []
    assert checker.stack == []
    return checker


@pytest.mark.parametrize("name", sorted(ALL))
def test_html_is_closed_and_self_contained(name: str) -> None:
    conv = ALL[name]()
    page = to_html(conv)
    assert page.startswith("<!DOCTYPE html>\n")
    checker = _check_html(page)
    tags = [tag for tag, _ in checker.tags]
    assert "script" not in tags and "link" not in tags and "iframe" not in tags
    assert tags.count("svg") == 1
    for tag, attrs in checker.tags:
        for key in ("src", "href", "xlink:href", "action"):
            assert key not in attrs, (tag, attrs)
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*https?://", page, re.IGNORECASE)
    assert not re.search(r"url\(", page)
    body = [r for r in checker.rows if r]
    assert len(body) == len(conv.rows)


def test_html_table_rows() -> None:
    checker = _check_html(to_html(lost_final_ack(), title="lost <ACK>"))
    rows = [r for r in checker.rows if r]
    assert rows[0][:8] == ["1", "0.0", "client → server", "SYN", "0", "", "seq 1000", "0"]
    assert rows[8][:10] == ["9", "30.3", "client → server", "ACK", "7", "2", "seq 1007 ack 5002",
                            "0", "win 64256 (502 << 7)", ""]
    assert rows[8][10:14] == [TIME_WAIT, LAST_ACK, "lost",
                              "server sent its FIN again: this ACK never arrived"]
    assert rows[9][2] == "client ← server" and rows[9][12] == "retransmission"
    titles = [attrs for tag, attrs in checker.tags if tag == "tr" and attrs.get("class")]
    assert [t["class"] for t in titles] == ["lost", "retransmission"]
    assert "<title>lost &lt;ACK&gt;</title>" in to_html(lost_final_ack(), title="lost <ACK>")


def test_html_escapes_hostile_payload() -> None:
    page = to_html(hostile())
    checker = _check_html(page)
    assert [tag for tag, _ in checker.tags].count("script") == 0
    assert "<b>" not in page
    payloads = [r[14] for r in checker.rows if len(r) > 14 and r[14]]
    assert '"<script>alert(1)</script> ]]> \\"&amp; \\x1b[31m 日本"' in payloads


# ---------------------------------------------------------------------------------- Mermaid

MESSAGE = re.compile(r"^\s*(A|B)(->>|-x)(A|B): (.*)$")


@pytest.mark.parametrize("name", sorted(ALL))
def test_mermaid_one_message_per_packet(name: str) -> None:
    conv = ALL[name]()
    lines = to_mermaid(conv).splitlines()
    assert lines[0] == "sequenceDiagram"
    messages = [m for m in map(MESSAGE.match, lines) if m]
    assert len(messages) == len(conv.rows)
    for m, row in zip(messages, conv.rows, strict=True):
        assert m.group(1) == "AB"[row.sender] and m.group(3) == "AB"[1 - row.sender]
        assert (m.group(2) == "-x") == (not row.delivered)
        assert not re.search(r"[;#](?!\d+;)", m.group(4).replace("#59;", "").replace("#35;", ""))
    for line in lines[1:]:
        assert re.match(r"^    (participant [AB] as |Note over [AB]: |[AB](->>|-x)[AB]: )", line)


def test_mermaid_lost_final_ack() -> None:
    lines = to_mermaid(lost_final_ack()).splitlines()
    assert lines[:6] == ["sequenceDiagram", "    participant A as client 10.0.0.1:40000",
                         "    participant B as server 10.0.0.2:80", "    Note over A: CLOSED",
                         "    Note over B: LISTEN", "    A->>B: SYN seq=0"]
    assert lines[-5:] == ["    A-xB: ACK seq=7 ack=2 [lost]", "    Note over A: TIME-WAIT",
                          "    B->>A: FIN-ACK seq=1 ack=7 [retransmission]",
                          "    A->>B: ACK seq=7 ack=2", "    Note over B: CLOSED"]


def test_mermaid_ipv6_and_hostile_names() -> None:
    conv = ipv6()
    conv.names = ("cli;ent#1", "ser\nver%")
    lines = to_mermaid(conv).splitlines()
    assert lines[1] == "    participant A as cli#59;ent#35;1 [fd00::1]:40000"
    assert lines[2] == "    participant B as ser ver#37; [fd00::2]:80"
    assert mermaid_text("a;b#c%d<e>&\nf\x1b") == "a#59;b#35;c#37;d#60;e#62;#38; f"
