"""`usertcp demo`, the README's main command, run as a user runs it (as root, no netns fixture:
the command makes and deletes its own namespace): every scenario, every ladder row."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from usertcp.demo import SCENARIOS
from usertcp.phy import read_pcap

MESSAGE = "ladder test 42"
N = len(MESSAGE) + 1  # the line the kernel sends, with its newline
MSL = 0.3
TIMEOUT = 30  # one run; the slowest (syn-retry) takes about 3 s
OWNER = 65534  # `sudo` as user nobody: who gets the --pcap file

# One packet row of the ladder (stdout is a pipe, so there are no colours), e.g.
#      0.0      SYN-SENT │── SYN  seq=0 ─────────────────────▶│ SYN-RECEIVED
#      2.1   ESTABLISHED │◀── SYN-ACK  seq=0  ack=1 ───────────│ SYN-RECEIVED
#   1022.1      LAST-ACK │   ✕── ACK  seq=17  ack=17  [lost] ──│ TIME-WAIT
ROW = re.compile(
    r"^\s*(?P<ms>\d+\.\d)\s+(?P<kernel>[A-Z0-9-]+) │(?P<arrow>◀──| *✕──|──) (?P<flags>[A-Z-]+)"
    r"  seq=(?P<seq>\d+)(?:  ack=(?P<ack>\d+))?(?:  len=(?P<len>\d+))?(?:  \[(?P<marks>[a-z, -]+)\])?"
    r" ─*(?:▶|✕ *)?│ (?P<stack>[A-Z0-9-]+)$"
)


def _rows(stdout: str) -> list[dict]:
    rows = []
    for line in stdout.splitlines():
        m = ROW.match(line)
        if m:
            row = m.groupdict()
            row["to_stack"] = row["arrow"] == "──"
            row["lost"] = "✕" in row.pop("arrow")
            row["flags"] = set(row["flags"].split("-"))
            row["marks"] = set(row["marks"].split(", ")) if row["marks"] else set()
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


def _run(*args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess[str], str]:
    """`usertcp demo ARGS` to its end (bounded); the result and its namespace's name."""
    env = {k: v for k, v in (env or os.environ).items() if k != "NO_COLOR"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "usertcp", "demo", "--msl", str(MSL), "--message", MESSAGE, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", env=env,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()  # by PID; the namespace is reaped by the next run
        out, err = proc.communicate()
        pytest.fail(f"usertcp demo {' '.join(args)} did not finish in {TIMEOUT} s\n{out}\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), \
        f"usertcp-demo-{proc.pid}"


# ------------------------------------------------------------------ what each ladder must show

# (direction, flags, seq, ack, len, kernel state, usertcp state, marks), seq/ack relative.
# ">": kernel -> usertcp, "<": usertcp -> kernel. Each application step is 0.25 s apart,
# longer than either side's delayed ACK, so every ACK gets its own row.
HANDSHAKE = [
    (">", "SYN", 0, None, None, "SYN-SENT", "SYN-RECEIVED", ""),
    ("<", "SYN-ACK", 0, 1, None, "ESTABLISHED", "SYN-RECEIVED", ""),
    (">", "ACK", 1, 1, None, "ESTABLISHED", "ESTABLISHED", ""),
]
ECHO = [
    (">", "PSH-ACK", 1, 1, N, "ESTABLISHED", "ESTABLISHED", ""),
    ("<", "ACK", 1, 1 + N, None, "ESTABLISHED", "ESTABLISHED", ""),
    ("<", "PSH-ACK", 1, 1 + N, N, "ESTABLISHED", "ESTABLISHED", ""),
    (">", "ACK", 1 + N, 1 + N, None, "ESTABLISHED", "ESTABLISHED", ""),
]
USERTCP_CLOSES = [
    ("<", "FIN-ACK", 1 + N, 1 + N, None, "CLOSE-WAIT", "FIN-WAIT-1", ""),
    (">", "ACK", 1 + N, 2 + N, None, "CLOSE-WAIT", "FIN-WAIT-2", ""),
    (">", "FIN-ACK", 1 + N, 2 + N, None, "LAST-ACK", "TIME-WAIT", ""),
]
FINAL_ACK = ("<", "ACK", 2 + N, 2 + N, None, "CLOSED", "TIME-WAIT", "")
L = len(f"1/3 {MESSAGE}\n")  # each of usertcp's lines in half-close

EXPECTED = {
    "normal": HANDSHAKE + ECHO + USERTCP_CLOSES + [FINAL_ACK],
    "lost-final-ack": HANDSHAKE + ECHO + USERTCP_CLOSES + [
        ("<", "ACK", 2 + N, 2 + N, None, "LAST-ACK", "TIME-WAIT", "lost"),
        (">", "FIN-ACK", 1 + N, 2 + N, None, "LAST-ACK", "TIME-WAIT", "retransmission"),
        FINAL_ACK,
    ],
    "kernel-closes-first": HANDSHAKE + ECHO + [
        (">", "FIN-ACK", 1 + N, 1 + N, None, "FIN-WAIT-1", "CLOSE-WAIT", ""),
        ("<", "ACK", 1 + N, 2 + N, None, "FIN-WAIT-2", "CLOSE-WAIT", ""),
        ("<", "FIN-ACK", 1 + N, 2 + N, None, "TIME-WAIT", "LAST-ACK", ""),
        (">", "ACK", 2 + N, 2 + N, None, "TIME-WAIT", "CLOSED", ""),
    ],
    # The kernel's FIN is held back until usertcp's has gone out: the FINs cross.
    "simultaneous-close": HANDSHAKE + ECHO + [
        ("<", "FIN-ACK", 1 + N, 1 + N, None, "CLOSING", "FIN-WAIT-1", ""),
        (">", "FIN-ACK", 1 + N, 1 + N, None, "CLOSING", "CLOSING", ""),
        ("<", "ACK", 2 + N, 2 + N, None, "TIME-WAIT", "CLOSING", ""),
        (">", "ACK", 2 + N, 2 + N, None, "TIME-WAIT", "TIME-WAIT", ""),
    ],
    # usertcp never had an ISN here: the reset's seq is absolute 0.
    "refused": [
        (">", "SYN", 0, None, None, "SYN-SENT", "CLOSED", ""),
        ("<", "RST-ACK", 0, 1, None, "CLOSED", "CLOSED", "reset"),
    ],
    "syn-retry": [
        HANDSHAKE[0],
        ("<", "SYN-ACK", 0, 1, None, "SYN-SENT", "SYN-RECEIVED", "lost"),
        (">", "SYN", 0, None, None, "SYN-SENT", "SYN-RECEIVED", "retransmission"),
        ("<", "SYN-ACK", 0, 1, None, "ESTABLISHED", "SYN-RECEIVED", "retransmission"),
        HANDSHAKE[2],
    ] + ECHO + USERTCP_CLOSES + [FINAL_ACK],
    "half-close": HANDSHAKE + ECHO[:2] + [
        (">", "FIN-ACK", 1 + N, 1, None, "FIN-WAIT-1", "CLOSE-WAIT", ""),
        ("<", "ACK", 1, 2 + N, None, "FIN-WAIT-2", "CLOSE-WAIT", ""),
    ] + [row for i in range(3) for row in (
        ("<", "PSH-ACK", 1 + i * L, 2 + N, L, "FIN-WAIT-2", "CLOSE-WAIT", ""),
        (">", "ACK", 2 + N, 1 + (i + 1) * L, None, "FIN-WAIT-2", "CLOSE-WAIT", ""),
    )] + [
        ("<", "FIN-ACK", 1 + 3 * L, 2 + N, None, "TIME-WAIT", "LAST-ACK", ""),
        (">", "ACK", 2 + N, 2 + 3 * L, None, "TIME-WAIT", "CLOSED", ""),
    ],
}


def _as_table(rows: list[dict]) -> list[tuple]:
    return [(">" if r["to_stack"] else "<", "-".join(sorted(r["flags"], key=_FLAG_ORDER.index)),
             r["seq"], r["ack"], r["len"], r["kernel"], r["stack"], ", ".join(sorted(r["marks"])))
            for r in rows]


_FLAG_ORDER = ["SYN", "FIN", "RST", "PSH", "URG", "ECE", "CWR", "ACK"]


def _check_ladder(name: str, stdout: str) -> list[dict]:
    rows = _rows(stdout)
    assert _as_table(rows) == EXPECTED[name], stdout
    # Only a packet the demo dropped is drawn lost (its arrow stops short in ✕).
    assert [r["lost"] for r in rows] == ["lost" in r["marks"] for r in rows]
    times = [float(r["ms"]) for r in rows]
    assert times == sorted(times) and times[0] == 0.0
    return rows


def _check_paragraph(name: str, stdout: str) -> None:
    assert "\nwhat happened\n" in stdout
    text = SCENARIOS[name].paragraph.format(x="×", msl=f"{MSL:g}", tw=f"{2 * MSL:g}")
    lines = stdout.splitlines()
    for line in text.splitlines():
        assert f"  {line}" in lines, line
    assert 3 <= len(text.splitlines()) <= 6


def _check_clean_exit(result: subprocess.CompletedProcess[str], netns: str) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    assert netns not in _namespaces()
    assert _processes_mentioning(f"--netns={netns}") == []
    assert f"network namespace {netns} deleted" in result.stdout


# ------------------------------------------------------------------ normal, both families


@pytest.fixture(scope="module", params=["ipv4", "ipv6"])
def demo(request) -> tuple[subprocess.CompletedProcess[str], str]:
    """One `normal` run per family: every test below checks both ladders."""
    return _run(*(["--ipv6"] if request.param == "ipv6" else []))


def test_exits_zero_and_leaves_nothing_behind(demo) -> None:
    _check_clean_exit(*demo)


def test_normal_every_row(demo) -> None:
    result, _ = demo
    _check_ladder("normal", result.stdout)
    _check_paragraph("normal", result.stdout)
    assert "scenario normal" in result.stdout.splitlines()[0]


def test_handshake_rows_with_relative_numbers(demo) -> None:
    result, _ = demo
    syn, syn_ack, ack = _rows(result.stdout)[:3]
    assert syn["to_stack"] and syn["flags"] == {"SYN"}
    assert (syn["seq"], syn["ack"]) == (0, None)
    assert not syn_ack["to_stack"] and (syn_ack["seq"], syn_ack["ack"]) == (0, 1)
    assert ack["to_stack"] and (ack["seq"], ack["ack"]) == (1, 1)
    # Absolute numbers are shown too, as x / y + offset.
    assert re.search(r"│   seq x = \d+ +│", result.stdout)
    assert re.search(r"seq y = \d+, ack x\+1 = \d+", result.stdout)


def test_message_goes_and_comes_back(demo) -> None:
    result, _ = demo
    data = [r for r in _rows(result.stdout) if r["len"]]
    assert [(r["to_stack"], r["len"], r["seq"]) for r in data] == [(True, N, 1), (False, N, 1)]
    assert result.stdout.count(f'{N} bytes "{MESSAGE}\\n"') == 2
    assert re.search(r"echo +sent .*got \d+ bytes back: ✓ the same", result.stdout)


def test_usertcp_closes_first_and_ends_in_time_wait(demo) -> None:
    result, _ = demo
    assert "usertcp closes first" in result.stdout
    usertcp, kernel = (" → ".join(path.split()) for path in PATHS["normal"])
    assert f"\n  usertcp  {usertcp}\n" in result.stdout
    assert f"\n  kernel   {kernel}\n" in result.stdout


def test_time_wait_counts_down_to_expiry(demo) -> None:
    result, _ = demo
    out = result.stdout
    assert re.search(r"TIME-WAIT · usertcp (10\.7\.0\.2:7 ⇄ 10\.7\.0\.1|\[fd00:7::2\]:7 ⇄ "
                     r"\[fd00:7::1\]):\d+, for 2 × MSL = 0\.6 s", out)
    left = [float(x) for x in re.findall(r"TIME-WAIT +(\d+\.\d+) s left", out)]
    assert len(left) >= 3 and left == sorted(left, reverse=True) and left[0] <= 2 * MSL
    m = re.search(r"CLOSED +0\.00 s left .* expired after (\d+\.\d+) s\n", out)
    assert m, out
    assert 2 * MSL <= float(m.group(1)) < 2 * MSL + 0.5
    assert "connection table is empty" in out


# ------------------------------------------------------------------ the other scenarios


@pytest.fixture(scope="module")
def pcap_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("demo-pcap")
    path.chmod(0o755)
    return path


OTHERS = [name for name in SCENARIOS if name != "normal"]


@pytest.fixture(scope="module")
def runs(pcap_dir):
    """`runs(name)`: the one run of that scenario (made on first use), with --pcap, as if by
    `sudo` for user nobody: (result, namespace, pcap path)."""
    done: dict[str, tuple[subprocess.CompletedProcess[str], str, Path]] = {}

    def run(name: str) -> tuple[subprocess.CompletedProcess[str], str, Path]:
        if name not in done:
            pcap = pcap_dir / f"{name}.pcap"
            env = dict(os.environ, SUDO_UID=str(OWNER), SUDO_GID=str(OWNER))
            result, netns = _run("--scenario", name, "--pcap", str(pcap), env=env)
            done[name] = (result, netns, pcap)
        return done[name]

    return run


@pytest.mark.parametrize("name", OTHERS)
def test_scenario_every_row(runs, name: str) -> None:
    result, netns, _ = runs(name)
    _check_clean_exit(result, netns)
    _check_ladder(name, result.stdout)
    assert f"scenario {name}" in result.stdout.splitlines()[0]


@pytest.mark.parametrize("name", OTHERS)
def test_scenario_explains_itself(runs, name: str) -> None:
    result, _, _ = runs(name)
    _check_paragraph(name, result.stdout)
    assert re.search(r"^summary\n  packets  \d+: ", result.stdout, re.MULTILINE)


@pytest.mark.parametrize("name", OTHERS)
def test_scenario_pcap_holds_the_ladders_packets(runs, name: str) -> None:
    result, _, pcap = runs(name)
    packets = read_pcap(pcap)
    assert len(packets) == len(EXPECTED[name]) == len(_rows(result.stdout))
    st = pcap.stat()
    assert (st.st_uid, st.st_gid) == (OWNER, OWNER)
    assert st.st_mode & 0o444 == 0o444


def test_lost_final_ack_restarts_time_wait(runs) -> None:
    out = runs("lost-final-ack")[0].stdout
    assert "lost     1: usertcp's ACK at" in out
    entered = float(re.search(r"entered +at (\d+\.\d) ms on the ladder", out).group(1))
    fin = float(re.search(r"FIN again +at (\d+\.\d) ms", out).group(1))
    restarted = float(re.search(r"restarted +at (\d+\.\d) ms", out).group(1))
    # Linux's RTO is 200 ms at least; the FIN came back before 2 x MSL ran out.
    assert 190 <= fin - entered < 2 * MSL * 1000
    assert 0 <= restarted - fin < 50
    m = re.search(r"CLOSED +0\.00 s left .* expired after (\d+\.\d+) s from the restart\n", out)
    assert m, out
    assert 2 * MSL <= float(m.group(1)) < 2 * MSL + 0.5
    total = float(re.search(r"TIME-WAIT lasted (\d+\.\d+) s in all", out).group(1))
    assert total > float(m.group(1)) + 0.15


def test_refused_connect_raises(runs) -> None:
    out = runs("refused")[0].stdout
    assert "connect() → ConnectionRefusedError" in out
    assert re.search(r"usertcp +CLOSED\n", out)
    assert "TIME-WAIT ·" not in out


def test_syn_retry_comes_after_the_kernels_initial_rto(runs) -> None:
    rows = _rows(runs("syn-retry")[0].stdout)
    assert 900 <= float(rows[2]["ms"]) < 1500  # the kernel's initial RTO is 1 s


# Both ends' states in order (usertcp's from its engine's events, the kernel's as sampled).
ACTIVE = "LISTEN SYN-RECEIVED ESTABLISHED FIN-WAIT-1 FIN-WAIT-2 TIME-WAIT CLOSED"
PASSIVE_KERNEL = "CLOSED SYN-SENT ESTABLISHED CLOSE-WAIT LAST-ACK CLOSED"
PASSIVE = "LISTEN SYN-RECEIVED ESTABLISHED CLOSE-WAIT LAST-ACK CLOSED"
ACTIVE_KERNEL = "CLOSED SYN-SENT ESTABLISHED FIN-WAIT-1 FIN-WAIT-2 TIME-WAIT"
PATHS = {
    "normal": (ACTIVE, PASSIVE_KERNEL),
    "lost-final-ack": (ACTIVE, PASSIVE_KERNEL),
    "kernel-closes-first": (PASSIVE, ACTIVE_KERNEL),
    "simultaneous-close": ("LISTEN SYN-RECEIVED ESTABLISHED FIN-WAIT-1 CLOSING TIME-WAIT CLOSED",
                           "CLOSED SYN-SENT ESTABLISHED FIN-WAIT-1 CLOSING TIME-WAIT"),
    "refused": ("CLOSED", "CLOSED SYN-SENT CLOSED"),
    "syn-retry": (ACTIVE, PASSIVE_KERNEL),
    "half-close": (PASSIVE, ACTIVE_KERNEL),
}


@pytest.mark.parametrize("name", OTHERS)
def test_scenario_paths(runs, name: str) -> None:
    result = runs(name)[0]
    usertcp, kernel = (" → ".join(path.split()) for path in PATHS[name])
    assert f"\n  usertcp  {usertcp}\n" in result.stdout
    assert f"\n  kernel   {kernel}\n" in result.stdout


# ------------------------------------------------------------------ the command line


def test_list_names_every_scenario_with_one_line() -> None:
    res = subprocess.run([sys.executable, "-m", "usertcp", "demo", "--list"], check=False,
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert res.returncode == 0 and res.stderr == ""
    lines = res.stdout.splitlines()[1:]
    assert [line.split()[0] for line in lines] == list(SCENARIOS)
    assert list(SCENARIOS) == ["normal", "lost-final-ack", "kernel-closes-first",
                               "simultaneous-close", "refused", "syn-retry", "half-close"]
    for line, sc in zip(lines, SCENARIOS.values(), strict=True):
        assert line.endswith(sc.summary)


@pytest.mark.parametrize(("args", "message"), [
    (["--scenario", "nope"], "unknown scenario 'nope'; choose one of normal, lost-final-ack"),
    (["--pcap", "/nonexistent-dir/x.pcap"], "--pcap: there is no directory /nonexistent-dir"),
    (["--msl", "0"], "--msl must be more than 0"),
])
def test_bad_options_give_one_line(args: list[str], message: str) -> None:
    res = subprocess.run([sys.executable, "-m", "usertcp", "demo", *args], check=False,
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert res.returncode == 2
    assert res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1
    assert message in res.stderr


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
    from usertcp.ladder.kernel import kernel_tcp_state

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

    from usertcp.ladder.kernel import kernel_tcp_state

    def words(ip: str) -> str:  # four host-order words, as /proc/net/tcp6 prints them
        raw = ipaddress.IPv6Address(ip).packed
        return "".join(f"{int.from_bytes(raw[i:i + 4], sys.byteorder):08X}" for i in (0, 4, 8, 12))

    line = (f"   0: {words('fd00:7::1')}:A0F3 {words('fd00:7::2')}:0007 06 00000000:00000000 "
            "00:0 0 0\n")
    proc = tmp_path / "tcp6"
    proc.write_text("  sl  local_address remote_address st ...\n" + line)
    assert kernel_tcp_state(("fd00:7::1", 0xA0F3), ("fd00:7::2", 7), str(proc)) == "TIME-WAIT"
    assert kernel_tcp_state(("fd00:7::1", 0xA0F4), ("fd00:7::2", 7), str(proc)) == "CLOSED"
