"""`usertcp ladder` and `usertcp plot` as a user runs them: options, formats, errors (issue 11)."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from usertcp.cli import main
from usertcp.phy.pcap import PcapFile
from usertcp.wire.ipv4 import addr_to_int
from usertcp.wire.tcp import ACK, FIN, PSH, SYN, build_segment

A, B = addr_to_int("10.9.0.1"), addr_to_int("10.9.0.2")


def connection(cport: int, sport: int, isn_c: int = 1000, isn_s: int = 5000) -> list[bytes]:
    """A whole connection: handshake, 5 bytes each way, the client closing first."""

    def seg(to_server: bool, flags: int, seq: int, ack: int, data: bytes = b"") -> bytes:
        src, dst, sp, dp = (A, B, cport, sport) if to_server else (B, A, sport, cport)
        return bytes(build_segment(src, dst, sp, dp, seq, ack, flags, 64240, payload=data))

    c, s = isn_c, isn_s
    return [
        seg(True, SYN, c, 0), seg(False, SYN | ACK, s, c + 1), seg(True, ACK, c + 1, s + 1),
        seg(True, PSH | ACK, c + 1, s + 1, b"hello"), seg(False, ACK, s + 1, c + 6),
        seg(False, PSH | ACK, s + 1, c + 6, b"world"), seg(True, ACK, c + 6, s + 6),
        seg(True, FIN | ACK, c + 6, s + 6), seg(False, ACK, s + 6, c + 7),
        seg(False, FIN | ACK, s + 6, c + 7), seg(True, ACK, c + 7, s + 7),
    ]


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    """Two connections, to ports 80 and 8080, in one pcap."""
    path = tmp_path / "two.pcap"
    with PcapFile(path) as pcap:
        t = 100.0
        for packet in connection(40000, 80) + connection(40001, 8080, 7000, 9000):
            pcap.write(packet, t)
            t += 0.001
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_text_ladder_of_the_connection_asked_for(capture: Path, capsys) -> None:
    rc, out, err = run(capsys, "ladder", str(capture), "--port", "8080")
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["client", "10.9.0.1:40001", "server", "10.9.0.2:8080"]
    arrows = [line for line in lines if "seq=" in line and ("▶" in line or "◀" in line)]
    assert len(arrows) == 11
    assert arrows[0].split()[1:5] == ["SYN-SENT", "│──", "SYN", "seq=0"]
    assert arrows[-1].split()[1] == "TIME-WAIT" and arrows[-1].split()[-1] == "CLOSED"
    assert "seq x = 7000" in out and "ack x+1 = 7001" in out


def test_several_connections_listed_and_the_first_drawn(capture: Path, capsys) -> None:
    rc, out, err = run(capsys, "ladder", str(capture), "--list")
    assert rc == 0 and err == ""
    assert [line.split()[:4] for line in out.splitlines()] == [
        ["1", "10.9.0.1:40000", "→", "10.9.0.2:80"], ["2", "10.9.0.1:40001", "→", "10.9.0.2:8080"]]
    rc, out, err = run(capsys, "ladder", str(capture))
    assert rc == 0
    assert "holds 2 connections; drawing the first" in err
    assert "10.9.0.2:80" in out.splitlines()[0]
    rc, out, _ = run(capsys, "ladder", str(capture), "--connection", "2", "--names", "kernel,usertcp")
    assert out.splitlines()[0].split() == ["kernel", "10.9.0.1:40001", "usertcp", "10.9.0.2:8080"]


def test_filter_picks_a_connection(capture: Path, capsys) -> None:
    rc, out, _ = run(capsys, "ladder", str(capture), "--filter", "dst port 8080 or src port 8080")
    assert rc == 0 and "10.9.0.2:8080" in out.splitlines()[0]
    rc, _, err = run(capsys, "ladder", str(capture), "--filter", "port 22")
    assert rc == 2 and err == f"usertcp ladder: error: {capture} holds no TCP connection matching 'port 22'\n"


@pytest.mark.parametrize("suffix, check", [
    (".svg", lambda text: ET.fromstring(text).tag.endswith("svg")),
    (".html", lambda text: text.lstrip().lower().startswith("<!doctype html>")),
    (".md", lambda text: text.startswith("sequenceDiagram\n") and text.count("->>") == 11),
])
def test_format_from_the_output_suffix(capture: Path, tmp_path: Path, capsys, suffix, check) -> None:
    out_path = tmp_path / f"ladder{suffix}"
    rc, out, err = run(capsys, "ladder", str(capture), "--port", "80", "-o", str(out_path))
    assert (rc, out, err) == (0, "", "")
    assert check(out_path.read_text(encoding="utf-8"))


def test_plot_svg_and_png(capture: Path, tmp_path: Path, capsys) -> None:
    svg, png = tmp_path / "g.svg", tmp_path / "g.png"
    assert run(capsys, "plot", str(capture), "--port", "80", "-o", str(svg))[0] == 0
    assert ET.fromstring(svg.read_text()).tag.endswith("svg")
    assert run(capsys, "plot", str(capture), "--port", "80", "--from", "server", "-o",
               str(png))[0] == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 300 and height > 200


@pytest.mark.parametrize("argv, message", [
    (["ladder", "/nonexistent.pcap"], "usertcp ladder: error: /nonexistent.pcap: no such file\n"),
    (["plot", "CAPTURE", "-o", "g.gif"],
     "usertcp plot: error: -o g.gif: the graph is written as .svg or .png\n"),
    (["plot", "CAPTURE"], "usertcp plot: error: give -o OUT.svg or -o OUT.png\n"),
    (["ladder", "CAPTURE", "--port", "9"],
     ("usertcp ladder: error: no connection uses port 9; the ports seen are 80, 8080, 40000, "
      "40001\n")),
])
def test_errors_are_one_line(capture: Path, capsys, argv, message: str) -> None:
    argv = [str(capture) if a == "CAPTURE" else a for a in argv]
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"usertcp {argv[0]}: error: ")
    assert err == message


def test_a_connection_that_is_not_there_lists_the_choices(capture: Path, capsys) -> None:
    rc, out, err = run(capsys, "ladder", str(capture), "--connection", "3")
    assert rc == 2 and out == ""
    first, *choices = err.splitlines()
    assert first == "usertcp ladder: error: no connection number 3; the choices are 1, 2:"
    assert [c.split()[:2] for c in choices] == [["1", "10.9.0.1:40000"], ["2", "10.9.0.1:40001"]]


def test_not_a_capture(tmp_path: Path, capsys) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("hello, this is text\n")
    rc, out, err = run(capsys, "ladder", str(bogus))
    assert rc == 2 and out == ""
    assert err.startswith(f"usertcp ladder: error: {bogus} is neither a pcap nor a pcapng file")
