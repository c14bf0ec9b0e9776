"""`usertcp demo`, the README's main command, run as a user runs it (as root, no netns fixture:
the command makes and deletes its own namespace)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

MESSAGE = "ladder test 42"
MSL = 0.5
TIMEOUT = 60

# One packet row of the ladder (stdout is a pipe, so there are no colours), e.g.
#      0.0      SYN-SENT │── SYN  seq=0 ─────────────────────▶│ SYN-RECEIVED
#      2.1   ESTABLISHED │◀── SYN-ACK  seq=0  ack=1 ───────────│ SYN-RECEIVED
ROW = re.compile(
    r"^\s*(?P<ms>\d+\.\d)\s+(?P<kernel>[A-Z0-9-]+) │(?P<arrow>◀──|──) (?P<flags>[A-Z-]+)"
    r"  seq=(?P<seq>\d+)(?:  ack=(?P<ack>\d+))?(?:  len=(?P<len>\d+))? ─*▶?│ (?P<stack>[A-Z0-9-]+)$"
)


def _rows(stdout: str) -> list[dict]:
    rows = []
    for line in stdout.splitlines():
        m = ROW.match(line)
        if m:
            row = m.groupdict()
            row["to_stack"] = row.pop("arrow") == "──"
            row["flags"] = set(row["flags"].split("-"))
            for key in ("seq", "ack", "len"):
                row[key] = int(row[key]) if row[key] is not None else None
            rows.append(row)
    return rows


def _namespaces() -> list[str]:
    res = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in res.stdout.splitlines() if line.strip()]


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module", params=["ipv4", "ipv6"])
def demo(request) -> tuple[subprocess.CompletedProcess[str], str]:
    """One demo run per family: every test below checks both ladders."""
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "usertcp", "demo", "--msl", str(MSL), "--message", MESSAGE,
         *(["--ipv6"] if request.param == "ipv6" else [])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", env=env,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"usertcp demo did not finish in {TIMEOUT} s\n{out}\n{err}")
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return result, f"usertcp-demo-{proc.pid}"


def test_exits_zero_and_leaves_nothing_behind(demo) -> None:
    result, netns = demo
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    assert netns not in _namespaces()
    assert _processes_mentioning(f"--netns {netns}") == []
    assert f"network namespace {netns} deleted" in result.stdout


def test_handshake_rows_with_relative_numbers(demo) -> None:
    result, _ = demo
    rows = _rows(result.stdout)
    assert len(rows) >= 9, result.stdout
    syn, syn_ack, ack = rows[:3]

    assert syn["to_stack"] and syn["flags"] == {"SYN"}
    assert (syn["seq"], syn["ack"]) == (0, None)
    assert (syn["kernel"], syn["stack"]) == ("SYN-SENT", "SYN-RECEIVED")

    assert not syn_ack["to_stack"] and syn_ack["flags"] == {"SYN", "ACK"}
    assert (syn_ack["seq"], syn_ack["ack"]) == (0, 1)
    assert (syn_ack["kernel"], syn_ack["stack"]) == ("ESTABLISHED", "SYN-RECEIVED")

    assert ack["to_stack"] and ack["flags"] == {"ACK"}
    assert (ack["seq"], ack["ack"]) == (1, 1)
    assert (ack["kernel"], ack["stack"]) == ("ESTABLISHED", "ESTABLISHED")

    # Absolute numbers are shown too, as x / y + offset.
    assert re.search(r"│   seq x = \d+ +│", result.stdout)
    assert re.search(r"seq y = \d+, ack x\+1 = \d+", result.stdout)


def test_message_goes_and_comes_back(demo) -> None:
    result, _ = demo
    rows = _rows(result.stdout)
    n = len(MESSAGE) + 1  # the line's newline
    data = [r for r in rows if r["len"]]
    assert [(r["to_stack"], r["len"], r["seq"]) for r in data] == [(True, n, 1), (False, n, 1)]
    assert result.stdout.count(f'{n} bytes "{MESSAGE}\\n"') == 2
    assert re.search(r"echo +sent .*got \d+ bytes back: ✓ the same", result.stdout)


def test_usertcp_closes_first_and_ends_in_time_wait(demo) -> None:
    result, _ = demo
    rows = _rows(result.stdout)
    n = len(MESSAGE) + 1
    fins = [r for r in rows if "FIN" in r["flags"]]
    assert len(fins) == 2, result.stdout
    ours, theirs = fins
    assert not ours["to_stack"] and theirs["to_stack"]
    assert rows.index(ours) < rows.index(theirs)
    assert (ours["seq"], ours["ack"]) == (1 + n, 1 + n)
    assert ours["stack"] == "FIN-WAIT-1" and ours["kernel"] == "CLOSE-WAIT"
    assert (theirs["seq"], theirs["ack"]) == (1 + n, 2 + n)
    assert theirs["kernel"] == "LAST-ACK" and theirs["stack"] == "TIME-WAIT"
    last = rows[-1]
    assert not last["to_stack"] and last["flags"] == {"ACK"}
    assert (last["seq"], last["ack"]) == (2 + n, 2 + n)
    assert (last["kernel"], last["stack"]) == ("CLOSED", "TIME-WAIT")
    assert "usertcp closes first" in result.stdout


def test_time_wait_counts_down_to_expiry(demo) -> None:
    result, _ = demo
    out = result.stdout
    assert re.search(r"TIME-WAIT · usertcp (10\.7\.0\.2:7 ⇄ 10\.7\.0\.1|\[fd00:7::2\]:7 ⇄ "
                     r"\[fd00:7::1\]):\d+, for 2 × MSL = 1 s", out)
    left = [float(x) for x in re.findall(r"TIME-WAIT +(\d+\.\d+) s left", out)]
    assert len(left) >= 3 and left == sorted(left, reverse=True) and left[0] <= 2 * MSL
    m = re.search(r"CLOSED +0\.00 s left .* expired after (\d+\.\d+) s", out)
    assert m, out
    assert 2 * MSL <= float(m.group(1)) < 2 * MSL + 0.5
    assert "connection table is empty" in out
    assert re.search(r"usertcp +LISTEN → SYN-RECEIVED → ESTABLISHED → FIN-WAIT-1 → .*"
                     r"TIME-WAIT → CLOSED", out)


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_without_root_it_says_so_and_exits_2() -> None:
    res = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-m", "usertcp", "demo"],
        check=False, capture_output=True, text=True, timeout=TIMEOUT,
    )
    if "No module named" in res.stderr or "Permission denied" in res.stderr:
        pytest.skip(f"user nobody cannot run this checkout's Python: {res.stderr.strip()[-200:]}")
    assert res.returncode == 2, res.stderr
    assert res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1
    assert "needs root" in res.stderr


def test_kernel_states_are_read_from_proc_net_tcp_format(tmp_path) -> None:
    from usertcp.ladder import kernel_tcp_state

    def word(ip: str) -> str:  # the kernel prints the address as a host-order word
        return f"{int.from_bytes(bytes(map(int, ip.split('.'))), sys.byteorder):08X}"

    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
    lines = [
        f"   0: {word('10.7.0.1')}:A0F3 {word('10.7.0.2')}:0007 09 00000000:00000000 00:0 0 0\n",
        f"   1: {word('10.7.0.1')}:A0F4 {word('10.7.0.2')}:0007 0B 00000000:00000000 00:0 0 0\n",
    ]
    proc = tmp_path / "tcp"
    proc.write_text(header + "".join(lines))
    remote = ("10.7.0.2", 7)
    assert kernel_tcp_state(("10.7.0.1", 0xA0F3), remote, str(proc)) == "LAST-ACK"
    assert kernel_tcp_state(("10.7.0.1", 0xA0F4), remote, str(proc)) == "CLOSING"
    assert kernel_tcp_state(("10.7.0.1", 0xA0F5), remote, str(proc)) == "CLOSED"


def test_kernel_states_are_read_from_proc_net_tcp6_format(tmp_path) -> None:
    import ipaddress

    from usertcp.ladder import kernel_tcp_state

    def words(ip: str) -> str:  # four host-order words, as /proc/net/tcp6 prints them
        raw = ipaddress.IPv6Address(ip).packed
        return "".join(f"{int.from_bytes(raw[i:i + 4], sys.byteorder):08X}" for i in (0, 4, 8, 12))

    line = (f"   0: {words('fd00:7::1')}:A0F3 {words('fd00:7::2')}:0007 06 00000000:00000000 "
            "00:0 0 0\n")
    proc = tmp_path / "tcp6"
    proc.write_text("  sl  local_address remote_address st ...\n" + line)
    assert kernel_tcp_state(("fd00:7::1", 0xA0F3), ("fd00:7::2", 7), str(proc)) == "TIME-WAIT"
    assert kernel_tcp_state(("fd00:7::1", 0xA0F4), ("fd00:7::2", 7), str(proc)) == "CLOSED"
